"""The decomposer: one call to the planner model for a PlanIn as JSON, at most one
repair call that quotes the errors back, then a clear failure."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from compound.core.errors import PlanInvalid
from compound.llm.base import Completion, Message
from compound.planner.plan import PlanIn
from compound.planner.repair import repair_plan
from compound.planner.validate import validate_plan
from compound.prompts import render

# What a call is: messages and an optional JSON schema in, a Completion out. The
# executor supplies it (reserving budget and writing the ledger around the call).
CallFn = Callable[[list[Message], dict[str, Any] | None], Awaitable[Completion]]

PLAN_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "subtasks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string"},
                    "tier_hint": {"type": "integer", "enum": [1, 2, 3]},
                    "depends_on": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                },
                "required": ["description", "tier_hint", "depends_on"],
            },
        },
    },
    "required": ["subtasks"],
}

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


def _check(text: str, max_subtasks: int, warnings: list[str] | None = None) -> PlanIn:
    """Parse, fix what needs no model (planner/repair.py), validate. The fixes are
    appended to `warnings` only when the plan then validates."""
    data, fixes = repair_plan(parse_plan_text(text))
    plan = validate_plan(data, max_subtasks=max_subtasks, raw=text)
    if warnings is not None:
        warnings.extend(fixes)
    return plan


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
                    warnings: list[str] | None = None) -> PlanIn:
    """One planner call; what can be fixed without a model is fixed (each fix appended
    to `warnings`); on what remains invalid exactly one repair call; then PlanInvalid.
    `context`: earlier messages of a conversation, given to the planner as data."""
    messages = render("decompose", request=request, max_subtasks=max_subtasks, context=context)
    first = await call(messages, PLAN_JSON_SCHEMA)
    try:
        return _check(first.text, max_subtasks, warnings)
    except PlanInvalid as exc:
        errors = exc.errors
    second = await call(repair_messages(messages, first.text, errors), PLAN_JSON_SCHEMA)
    try:
        return _check(second.text, max_subtasks, warnings)
    except PlanInvalid as exc:
        raise PlanInvalid(
            [f"the planner's answer was invalid twice (one repair tried): {e}" for e in exc.errors],
            second.text,
        ) from None
