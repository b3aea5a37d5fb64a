"""The one seam to models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from compound.llm.base import (
    Completion,
    Delta,
    LLMClient,
    Message,
    Price,
    StreamEvent,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)

if TYPE_CHECKING:
    from compound.core.settings import Settings

__all__ = ["Completion", "Delta", "LLMClient", "Message", "Price", "StreamEvent", "ToolCall", "ToolChoice", "ToolSpec",
           "Usage", "build_client",
           "collect"]


def build_client(settings: Settings) -> LLMClient:
    """The registry: anthropic/... on the anthropic SDK, openai/... on the openai SDK,
    every other provider on litellm (docs/design.md, "LLM seam"). The process's secrets
    registry is built from the same settings: the keys it calls with are redacted."""
    from compound.core import secrets
    from compound.llm.registry import ClientRegistry

    secrets.configure(settings)

    return ClientRegistry(settings)


async def collect(events: AsyncIterator[StreamEvent], on_delta: Callable[[str], object] | None = None) -> Completion:
    """Drain a stream: each Delta's text to `on_delta`, the final Completion returned."""
    final: Completion | None = None
    async for event in events:  # to the end, so the stream closes itself
        if isinstance(event, Completion):
            final = event
        elif on_delta is not None:
            on_delta(event.text)
    if final is not None:
        return final
    from compound.core.errors import ProviderError

    raise ProviderError("the stream ended before its usage came (the answer was cut off)", transient=True)
