"""The one seam to models: a small protocol, and the shapes that cross it.

The planner and the executor take an LLMClient as an argument and never import
litellm. One `complete()` is one provider call (no retries inside): the executor
retries, falls back and accounts each attempt on its own ledger row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

from compound.core.money import Price, Usage

__all__ = ["Completion", "LLMClient", "Message", "Price", "Usage"]


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    usage: Usage
    cost_usd: float
    latency_s: float = 0.0
    finish_reason: str | None = None


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
