"""One logical call of a task (CallSpec) and its worst case, the amount reserved
before each attempt is sent."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from compound.core.money import Price, worst_case_usd
from compound.llm.base import Message, ToolChoice, ToolSpec


@dataclasses.dataclass(frozen=True, slots=True)
class CallSpec:
    """One logical call of a task (tried on each model of `models` in turn)."""

    kind: str  # CallKind
    subtask: int | None
    tier: int | None
    models: list[str]
    messages: list[Message]
    max_tokens: int
    json_schema: dict[str, Any] | None = None
    attempts_before: int = 0  # a resumed subtask's attempts so far
    answer: bool = False  # its text is the task's answer (streamed to listeners): the synthesis, or a sole subtask
    # A turn of a tool loop (executor/steps.py): the tools the model may call, and the
    # turn (text and tool calls) kept on its ledger row, so a resumed loop replays it.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    turn: bool = False
    counter: AttemptCounter | None = None  # shared by a loop's turns: attempts go on counting

    # What the subtask completes with, in the same transaction as this call's settlement,
    # given the call's text (None: it does not complete). Unset: a subtask call's text.
    result_of: Callable[[str], str | None] | None = None

    # Streamed, each piece given to on_delta(attempt, text) as it arrives (a streamed plan).
    on_delta: Callable[[int, str], None] | None = None


@dataclasses.dataclass(slots=True)
class AttemptCounter:
    """The attempts of a subtask so far, across the turns of its tool loop."""

    n: int = 0


# A provider adds a system prompt of its own when tools are given (Anthropic's is some
# 350 tokens); the tools' JSON and the calls in the history are counted as bytes.
TOOL_FRAMING_TOKENS = 1024


def worst_case_of(spec: CallSpec, max_tokens: int, price: Price) -> float:
    """A call's worst case (core/money.py), with what a tool turn adds: the tools'
    schemas, the calls in the history and the provider's tool framing."""
    if not spec.tools and not any(m.get("tool_calls") for m in spec.messages):
        return worst_case_usd(spec.messages, max_tokens, price)
    # escaped JSON: at least as many bytes as the text, and never a lone surrogate
    extra = json.dumps([[t.name, t.description, t.input_schema] for t in spec.tools])
    view: list[dict[str, Any]] = [dict(m) for m in spec.messages]
    for m in view:
        if m.get("tool_calls"):
            m["content"] = str(m["content"]) + json.dumps([[c.id, c.name, c.arguments] for c in m["tool_calls"]])
    view.append({"role": "system", "content": extra})
    dearest = max(price.input, price.cache_write, price.cache_read)
    return worst_case_usd(view, max_tokens, price) + TOOL_FRAMING_TOKENS * dearest
