"""The one seam to models (see base.py). litellm is imported only in this package."""

from compound.llm.base import Completion, LLMClient, Message, Price, Usage

__all__ = ["Completion", "LLMClient", "Message", "Price", "Usage"]
