"""The one seam to models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compound.llm.base import Completion, LLMClient, Message, Price, Usage

if TYPE_CHECKING:
    from compound.core.settings import Settings

__all__ = ["Completion", "LLMClient", "Message", "Price", "Usage", "build_client"]


def build_client(settings: Settings) -> LLMClient:
    from compound.llm.litellm_client import LiteLLMClient

    return LiteLLMClient(settings)
