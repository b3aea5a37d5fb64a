"""The client registry: one LLMClient that hands each call to the adapter serving its
model (anthropic SDK, openai SDK, or litellm), chosen once per model from its name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from compound.core.settings import Settings
from compound.llm.base import Completion, LLMClient, Message, StreamEvent, ToolChoice, ToolSpec
from compound.llm.endpoints import AdapterName, adapter_of


class ClientRegistry:
    """Adapters and their SDK clients are made here, at start, for every configured model."""

    def __init__(self, settings: Settings) -> None:
        from compound.llm.anthropic_client import AnthropicClient
        from compound.llm.litellm_client import LiteLLMClient
        from compound.llm.openai_client import OpenAIClient

        self.settings = settings
        self.adapters: dict[AdapterName, Any] = {
            "anthropic": AnthropicClient(settings),
            "openai": OpenAIClient(settings),
            "litellm": LiteLLMClient(settings),
        }
        self._by_model: dict[str, LLMClient] = {}
        for model in settings.all_models():
            self.adapter_for(model)

    def adapter_name(self, model: str) -> AdapterName:
        return adapter_of(model, self.settings)

    def adapter_for(self, model: str) -> LLMClient:
        adapter = self._by_model.get(model)
        if adapter is None:
            name = self.adapter_name(model)
            adapter = self.adapters[name]
            if name != "litellm":
                adapter.prepare(model)  # its SDK client, made now rather than on the first call
            self._by_model[model] = adapter
        return adapter

    async def warm(self) -> None:
        """Import litellm at start only when a configured model is served by it."""
        if any(self.adapter_name(m) == "litellm" for m in self.settings.all_models()):
            await self.adapters["litellm"].warm()

    def structured_output(self) -> dict[str, str]:
        """model -> the structured-output form its endpoint accepted (openai adapter)."""
        return dict(self.adapters["openai"].structured_output())

    async def aclose(self) -> None:
        await self.adapters["anthropic"].aclose()
        await self.adapters["openai"].aclose()

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
        return await self.adapter_for(model).complete(model=model, messages=messages, max_tokens=max_tokens,
                                                      json_schema=json_schema, timeout_s=timeout_s, tools=tools,
                                              tool_choice=tool_choice)

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
        return self.adapter_for(model).stream(model=model, messages=messages, max_tokens=max_tokens,
                                              json_schema=json_schema, timeout_s=timeout_s, tools=tools,
                                              tool_choice=tool_choice)


def adapter_table(settings: Settings) -> dict[str, str]:
    """model -> the adapter that serves it (for `compound config show`)."""
    return {model: adapter_of(model, settings) for model in settings.all_models()}
