"""The one seam to models: a small protocol, and the shapes that cross it.

The planner and the executor take an LLMClient as an argument and never import
litellm. One `complete()` is one provider call (no retries inside): the executor
retries, falls back and accounts each attempt on its own ledger row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, Protocol, TypedDict


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str
    # The prompt up to and including this message is shared by later calls: an adapter
    # whose provider caches on request (Anthropic) marks it; the others ignore it.
    cache: NotRequired[bool]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens as the provider reported them. input_tokens excludes cache reads and
    cache writes (Anthropic's convention; OpenAI's prompt_tokens is split to match)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    usage: Usage
    cost_usd: float
    latency_s: float = 0.0
    finish_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


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


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token. cache_write applies to prompt-cache creation tokens."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
        )
