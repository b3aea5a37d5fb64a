"""A replanning round: the planner is shown the request, the finished subtasks with
their results and what failed, and answers subtasks to add (the next indices, each
depending only on finished subtasks or on additions listed before it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compound.core.errors import PlanInvalid
from compound.planner.decompose import CallFn, parse_plan_text, plan_schema
from compound.planner.plan import SubtaskIn
from compound.planner.stream import entry, entry_errors
from compound.prompts import render


@dataclass(frozen=True, slots=True)
class Finished:
    index: int
    description: str
    result: str


@dataclass(frozen=True, slots=True)
class Failed:
    index: int
    description: str
    why: str


def additions(data: Any, *, finished: set[int], next_index: int, max_new: int, raw: str | None = None
              ) -> list[SubtaskIn]:
    """The subtasks a round's answer adds, checked; PlanInvalid with every error."""
    items = data.get("subtasks") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise PlanInvalid(["the answer has no 'subtasks' list"], raw)
    if len(items) > max_new:
        raise PlanInvalid([f"the answer adds {len(items)} subtasks; at most {max_new} are allowed"], raw)
    errors: list[str] = []
    out: list[SubtaskIn] = []
    for k, item in enumerate(items):
        index = next_index + k
        problems = entry_errors(item, index, next_index + len(items))
        if not problems:
            bad = [d for d in item.get("depends_on") or [] if d not in finished and not next_index <= d < index]
            problems = [f"subtask {index} depends on {d}, which is neither finished nor an earlier addition"
                        for d in bad]
        if problems:
            errors.extend(problems)
        else:
            out.append(entry(item))
    if errors:
        raise PlanInvalid(errors, raw)
    return out


async def replan(call: CallFn, request: str, *, context: list[dict[str, str]] | None,
                 finished: list[Finished], failed: list[Failed], next_index: int, max_new: int) -> list[SubtaskIn]:
    """One planner call for a round; its additions, or PlanInvalid (no repair: a round
    whose answer is unusable adds nothing, and replanning ends)."""
    messages = render("replan", request=request, context=context, next_index=next_index, max_new=max_new,
                      finished=[(f.index, f.description, f.result) for f in finished],
                      failed=[(f.index, f.description, f.why) for f in failed])
    answer = await call(messages, plan_schema(next_index + max_new))
    return additions(parse_plan_text(answer.text), finished={f.index for f in finished},
                     next_index=next_index, max_new=max_new, raw=answer.text)
