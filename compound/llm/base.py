"""The one seam to models: a small protocol, and the shapes that cross it.

The planner and the executor take an LLMClient as an argument and never import
litellm. One `complete()` is one provider call (no retries inside): the executor
retries, falls back and accounts each attempt on its own ledger row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from compound.core.money import Price, Usage

__all__ = ["Completion", "Delta", "LLMClient", "Message", "Price", "StreamEvent", "Usage"]


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str
    # The prompt up to and including this message is shared by later calls: an adapter
    # whose provider caches on request (Anthropic) marks it; the others ignore it.
    cache: NotRequired[bool]


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    usage: Usage
    cost_usd: float
    latency_s: float = 0.0
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer's text, as the provider streamed it."""

    text: str


# What `stream()` yields: Deltas, then exactly one Completion (usage and cost) last.
StreamEvent = Delta | Completion


class LLMClient(Protocol):
    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        """Send one call. Raises compound.core.errors.ProviderError on failure
        (`transient` tells retryable from permanent)."""
        ...

    def stream(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The same call, streamed: text Deltas as they arrive, then one Completion
        (whole text, usage, cost). Errors as for `complete()`, raised from iteration."""
        ...
