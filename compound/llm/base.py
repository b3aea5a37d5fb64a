"""The one seam to models: a small protocol, and the shapes that cross it.

The planner and the executor take an LLMClient as an argument and never import
litellm. One `complete()` is one provider call (no retries inside): the executor
retries, falls back and accounts each attempt on its own ledger row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from compound.core.money import Price, Usage

__all__ = ["Completion", "Delta", "LLMClient", "Message", "Price", "StreamEvent", "ToolCall", "ToolChoice",
           "ToolSpec", "Usage"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool a model may call. `name` is compound's own (`server.tool`); an adapter
    encodes it for providers whose names cannot hold a dot, and decodes it back."""

    name: str
    description: str
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call a model asked for: the provider's call id, compound's tool name, and
    the arguments as parsed JSON (an object)."""

    id: str
    name: str
    arguments: dict[str, Any]


# "auto": the model may call the tools given; "none": it must answer in text (the tools
# are still described, as providers require once the history holds tool calls).
ToolChoice = Literal["auto", "none"]


class Message(TypedDict):
    # "tool" carries one tool call's result back to the model (`tool_call_id`).
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # The prompt up to and including this message is shared by later calls: an adapter
    # whose provider caches on request (Anthropic) marks it; the others ignore it.
    cache: NotRequired[bool]
    # An assistant turn that asked for tools (content may be empty).
    tool_calls: NotRequired[list[ToolCall]]
    # On a "tool" message: which call this answers, and whether it is an error result.
    tool_call_id: NotRequired[str]
    is_error: NotRequired[bool]


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    usage: Usage
    cost_usd: float
    latency_s: float = 0.0
    finish_reason: str | None = None
    # The tools the model asked to call in this turn (empty when it answered in text).
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer's text, as the provider streamed it."""

    text: str


# What `stream()` yields: Deltas, then exactly one Completion (usage and cost) last.
StreamEvent = Delta | Completion


class LLMClient(Protocol):
    async def warm(self) -> None:
        """Pay start-up costs (imports, connections) before the first call; the host that
        made the client calls it once at start. Nothing to do for most clients."""
        ...

    async def aclose(self) -> None:
        """Let go of what the client holds (HTTP sessions), on the event loop it ran on;
        the host that made the client calls it once at stop."""
        ...

    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        """Send one call. With `tools`, the model may answer with `tool_calls` in the
        provider's native format (OpenAI tool_calls, Anthropic tool_use blocks).
        Raises compound.core.errors.ProviderError on failure (`transient` tells
        retryable from permanent)."""
        ...

    def stream(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[StreamEvent]:
        """The same call, streamed: text Deltas as they arrive, then one Completion
        (whole text, usage, cost, and any tool calls, assembled from the stream).
        Errors as for `complete()`, raised from iteration."""
        ...
