"""The decomposer: one call to the planner model for a PlanIn as JSON, at most one
repair call that quotes the errors back, then the request as a one-subtask plan (the
fallback, with a warning) or, when asked, a clear failure."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from compound.core.errors import BudgetExceeded, PlanInvalid, ProviderError
from compound.llm.base import Completion, Message
from compound.planner.cards import ToolLike, cards_for
from compound.planner.plan import PlanIn, SubtaskIn, missing_join
from compound.planner.repair import repair_plan
from compound.planner.stream import PlanStream, same
from compound.planner.validate import validate_plan
from compound.prompts import render

# What a call is: messages and an optional JSON schema in, a Completion out. The
# executor supplies it (reserving budget and writing the ledger around the call).
CallFn = Callable[[list[Message], dict[str, Any] | None], Awaitable[Completion]]
# The same call, streamed when given a third argument: on_delta(attempt, text) for each
# piece of the answer (a retry is a new attempt, streamed from its start).
StreamCallFn = Callable[..., Awaitable[Completion]]

# Lengths the decoder holds a plan's text to: a small model left free rambles inside a
# string until max_tokens cuts the JSON off. A user's own plan may say more
# (validate.MAX_DESCRIPTION_CHARS).
MAX_REASONING_CHARS = 400
MAX_PLANNED_DESCRIPTION = 400


def plan_schema(max_subtasks: int, tools: Sequence[str] = (), steps: Sequence[str] = ()) -> dict[str, Any]:
    """PlanIn as a JSON schema with its bounds (integer indices below the plan's size,
    tiers 1-3, at most `max_subtasks` subtasks, bounded text), for endpoints that constrain decoding
    to a schema: what the decoder enforces, the model cannot get wrong. With `tools`
    (the names on the planner's cards), a subtask may also name them (section 11's
    fields, not required)."""
    schema = _schema(max_subtasks)
    if tools:
        names = {"type": "string", "enum": list(tools)}
        schema["properties"]["subtasks"]["items"]["properties"].update({
            "tools": {"type": "array", "items": names},
            "kind": {"type": "string", "enum": ["llm", "tool"]},
            "tool": names,
            "arguments": {"type": "object"},
        })
    if steps:  # the registered step kinds on the planner's cards
        items = schema["properties"]["subtasks"]["items"]["properties"]
        kinds = ["llm", "tool"] if tools else ["llm"]
        items.update({"kind": {"type": "string", "enum": [*kinds, *steps]}, "arguments": {"type": "object"}})
    return schema


def _schema(max_subtasks: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": MAX_REASONING_CHARS},
            "subtasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_subtasks,
                "items": {
                    "type": "object",
                    "properties": {
                        "description": {"type": "string", "minLength": 1, "maxLength": MAX_PLANNED_DESCRIPTION},
                        "tier_hint": {"type": "integer", "minimum": 1, "maximum": 3},
                        "depends_on": {"type": "array",
                                       "items": {"type": "integer", "minimum": 0, "maximum": max_subtasks - 1}},
                    },
                    "required": ["description", "tier_hint", "depends_on"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["reasoning", "subtasks"],
        "additionalProperties": False,
    }


# The fallback: the request itself as the only subtask, on the balanced tier (the
# planner could not say how hard it is; tier 1 may be too weak for a request that
# needed splitting, tier 3 costs the most).
FALLBACK_TIER = 2
FALLBACK_DESCRIPTION = "Answer the whole request"


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def parse_plan_text(text: str) -> Any:
    """JSON from a model's answer: plain, inside a ``` fence, or the first balanced
    {...} in prose. PlanInvalid when there is none."""
    stripped = text.strip()
    if not stripped:
        raise PlanInvalid(["the answer was empty; expected a JSON object"], text)
    candidates = [stripped]
    candidates += [m.strip() for m in _FENCE.findall(stripped)]
    first = _first_object(stripped)
    if first:
        candidates.append(first)
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise PlanInvalid(
        [f"the answer is not JSON (it starts {stripped[:60]!r}); expected only a JSON object"],
        text,
    )


def _first_object(text: str) -> str | None:
    start = text.find("{")
    while start >= 0:
        depth = 0
        in_str = False
        escaped = False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def _check(text: str, max_subtasks: int, warnings: list[str] | None = None,
           tools: Collection[str] | None = None, kinds: Mapping[str, dict[str, Any]] | None = None) -> PlanIn:
    """Parse, fix what needs no model (planner/repair.py), validate, then flag a likely
    missing join. The warnings are appended to `warnings` only when the plan validates."""
    data, fixes = repair_plan(parse_plan_text(text), tools=tools)
    plan = validate_plan(data, max_subtasks=max_subtasks, raw=text, tools=tools, kinds=kinds or {})
    if warnings is not None:
        warnings.extend(fixes)
        join = missing_join(plan.deps())
        if join is not None:
            last, used, unused = join
            warnings.append(
                f"missing join: the last subtask ({last}) uses {_listed(used)} but not {_listed(unused)}, "
                "whose results no other subtask uses; if it should combine them all, its depends_on "
                "lacks them")
    return plan


def _listed(indices: list[int]) -> str:
    return ("subtask " if len(indices) == 1 else "subtasks ") + ", ".join(str(i) for i in indices)


def fallback_plan(errors: list[str]) -> tuple[PlanIn, str]:
    """The request as one subtask (the worker sees the request itself), and the warning
    that says why."""
    shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    plan = PlanIn(reasoning="The planner gave no usable plan; the request runs as one subtask.",
                  subtasks=[SubtaskIn(description=FALLBACK_DESCRIPTION, tier_hint=FALLBACK_TIER, depends_on=[])])
    return plan, (f"fallback: the planner gave no usable plan after one repair call ({shown}); "
                  f"the request runs as one subtask on tier {FALLBACK_TIER}")


def repair_messages(messages: list[Message], bad_answer: str, errors: list[str]) -> list[Message]:
    listed = "\n".join(f"- {e}" for e in errors)
    return [
        *messages,
        {"role": "assistant", "content": bad_answer or "(empty answer)"},
        {
            "role": "user",
            "content": "That plan cannot be used. Its errors:\n"
            f"{listed}\n"
            "Answer again with the corrected plan as a JSON object only, in the same shape.",
        },
    ]


async def decompose(call: CallFn, request: str, *, max_subtasks: int,
                    context: list[dict[str, str]] | None = None,
                    warnings: list[str] | None = None, fallback: bool = True,
                    tools: Sequence[ToolLike] | None = None, steps: Sequence[ToolLike] = (),
                    kinds: Mapping[str, dict[str, Any]] | None = None) -> PlanIn:
    """One planner call; what can be fixed without a model is fixed (each fix appended
    to `warnings`); on what remains invalid exactly one repair call; then, when the
    answer is still unusable, the fallback plan (`fallback_plan`, its warning appended)
    or, with `fallback=False`, PlanInvalid. A failed call (ProviderError,
    BudgetExceeded) is raised either way: there was no answer to judge.
    `context`: earlier messages of a conversation, given to the planner as data.
    `tools`: the tool catalogue (ToolServers.catalogue()): the planner sees cards of
    the most relevant (planner/cards.py), and the plan may name only its tools.
    `steps`: the registered step kinds' cards (compound.plugins), shown in a <steps>
    block; `kinds`: their argument schemas, which the plan's kinds are checked against."""
    cards = cards_for(request, tools) if tools else []
    names = {t.name for t in tools} if tools is not None else None
    messages = render("decompose", request=request, max_subtasks=max_subtasks, context=context,
                      tools=[c.line() for c in cards], steps=[c.line() for c in cards_for(request, steps)])
    schema = plan_schema(max_subtasks, [c.name for c in cards], [c.name for c in steps])
    first = await call(messages, schema)
    return await _settle(call, messages, schema, first.text, max_subtasks=max_subtasks, warnings=warnings,
                         fallback=fallback, started=[], hold=lambda _i: False, tools=names,
                         kinds=kinds or {})


async def decompose_streamed(call: StreamCallFn, request: str, *, max_subtasks: int,
                             on_entry: Callable[[int, SubtaskIn], None], hold: Callable[[int], bool],
                             context: list[dict[str, str]] | None = None,
                             warnings: list[str] | None = None, fallback: bool = True,
                             tools: Sequence[ToolLike] | None = None, steps: Sequence[ToolLike] = (),
                             kinds: Mapping[str, dict[str, Any]] | None = None) -> PlanIn:
    """`decompose` with the planner's answer streamed: each entry complete and valid on
    its own goes to `on_entry` at once (planner/stream.py), so it can start while the
    rest is written. The plan returned has at least as many subtasks as were handed out
    and keeps every one that started: an entry the whole answer changes is asked to
    `hold(index)`, which keeps it from starting and says True, or says False when it
    has started already (then the answer is not kept). When the answer (or its repair)
    cannot be kept, or the call fails after entries were handed out, the plan is cut to
    them (a warning says so): what started is never dropped or run twice. With nothing
    handed out, exactly as `decompose` (`tools` too)."""
    cards = cards_for(request, tools) if tools else []
    names = {t.name for t in tools} if tools is not None else None
    messages = render("decompose", request=request, max_subtasks=max_subtasks, context=context,
                      tools=[c.line() for c in cards], steps=[c.line() for c in cards_for(request, steps)])
    schema = plan_schema(max_subtasks, [c.name for c in cards], [c.name for c in steps])
    stream = PlanStream(max_subtasks)
    attempts: list[int] = []

    def on_delta(attempt: int, text: str) -> None:
        if not attempts or attempts[-1] != attempt:  # a retry streams its answer from the start
            attempts.append(attempt)
            stream.restart()
        for index, got in stream.feed(text):
            on_entry(index, got)

    try:
        first = await call(messages, schema, on_delta)
    except (ProviderError, BudgetExceeded) as exc:
        if not stream.emitted:
            raise
        return _cut(stream.emitted, f"the planner's call failed ({exc.message})", warnings)
    return await _settle(call, messages, schema, first.text, max_subtasks=max_subtasks, warnings=warnings,
                         fallback=fallback, started=stream.emitted, hold=hold, tools=names,
                         kinds=kinds or {})


async def decompose_keeping(call: CallFn, request: str, *, kept: list[SubtaskIn], hold: Callable[[int], bool],
                            max_subtasks: int, context: list[dict[str, str]] | None = None,
                            warnings: list[str] | None = None, tools: Sequence[ToolLike] | None = None,
                            steps: Sequence[ToolLike] = (), kinds: Mapping[str, dict[str, Any]] | None = None,
                            ) -> PlanIn:
    """The whole plan of a task whose streamed plan was interrupted after `kept` (at
    least one entry) had been stored: the planner is asked again, not streamed, and
    its plan must keep those entries, as a streamed plan's must (`hold(index)` says
    whether a stored entry never started, so the plan may change it). When it cannot
    be kept, or the call fails, the plan is cut to `kept` (a warning says so)."""
    cards = cards_for(request, tools) if tools else []
    names = {t.name for t in tools} if tools is not None else None
    messages = render("decompose", request=request, max_subtasks=max_subtasks, context=context,
                      tools=[c.line() for c in cards], steps=[c.line() for c in cards_for(request, steps)])
    schema = plan_schema(max_subtasks, [c.name for c in cards], [c.name for c in steps])
    try:
        first = await call(messages, schema)
    except (ProviderError, BudgetExceeded) as exc:
        return _cut(kept, f"the planner's call failed ({exc.message})", warnings)
    return await _settle(call, messages, schema, first.text, max_subtasks=max_subtasks, warnings=warnings,
                         fallback=False, started=kept, hold=hold, tools=names, kinds=kinds or {})


def _cut(started: list[SubtaskIn], why: str, warnings: list[str] | None) -> PlanIn:
    if warnings is not None:
        warnings.append(f"streamed plan cut: {why} after {len(started)} subtask(s) had started; "
                        f"the plan keeps those {len(started)} and drops the rest")
    return PlanIn(reasoning=None, subtasks=list(started))


def _keeps(plan: PlanIn, started: list[SubtaskIn], hold: Callable[[int], bool]) -> bool:
    return len(plan.subtasks) >= len(started) and all(
        same(a, b) or hold(k) for k, (a, b) in enumerate(zip(plan.subtasks, started, strict=False)))


def _check_keeping(text: str, max_subtasks: int, started: list[SubtaskIn], hold: Callable[[int], bool],
                   warnings: list[str] | None, tools: Collection[str] | None = None,
                   kinds: Mapping[str, dict[str, Any]] | None = None) -> PlanIn:
    """`_check`, and a plan that changes an entry already started is invalid too."""
    fixes: list[str] = []
    plan = _check(text, max_subtasks, fixes, tools, kinds)
    if not _keeps(plan, started, hold):
        raise PlanInvalid([f"subtasks 0 to {len(started) - 1} may have started already; the plan must keep them "
                           "as they were (same description, tier_hint and depends_on)"], text)
    if warnings is not None:
        warnings.extend(fixes)
    return plan


async def _settle(call: CallFn, messages: list[Message], schema: dict[str, Any], text: str, *,
                  max_subtasks: int, warnings: list[str] | None, fallback: bool,
                  started: list[SubtaskIn], hold: Callable[[int], bool],
                  tools: Collection[str] | None = None,
                  kinds: Mapping[str, dict[str, Any]] | None = None) -> PlanIn:
    """The first answer judged, one repair call if it is unusable, then the fallback
    (nothing started), PlanInvalid (`fallback=False`) or the plan cut to what started."""
    try:
        return _check_keeping(text, max_subtasks, started, hold, warnings, tools, kinds)
    except PlanInvalid as exc:
        errors = exc.errors
    asked = repair_messages(messages, text, errors)
    if started:
        asked[-1] = {**asked[-1], "content": asked[-1]["content"] + (
            f"\nSubtasks 0 to {len(started) - 1} have started already: repeat them exactly as they were, first.")}
    try:
        second = await call(asked, schema)
    except (ProviderError, BudgetExceeded) as call_error:
        if not started:
            raise
        return _cut(started, f"the planner's repair call failed ({call_error.message})", warnings)
    try:
        return _check_keeping(second.text, max_subtasks, started, hold, warnings, tools, kinds)
    except PlanInvalid as exc:
        if started:
            return _cut(started, "the planner's answer was invalid twice (" + "; ".join(exc.errors[:3]) + ")",
                        warnings)
        if not fallback:
            raise PlanInvalid(
                [f"the planner's answer was invalid twice (one repair tried): {e}" for e in exc.errors],
                second.text,
            ) from None
        plan, why = fallback_plan(exc.errors)
        if warnings is not None:
            warnings.append(why)
        return plan
