"""The litellm adapter, for every provider without an SDK adapter (Gemini, Bedrock,
Vertex, Mistral, Groq, ...): one `acompletion` per `complete()`, streamed or not."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("DISABLE_AIOHTTP_TRANSPORT", "True")

from compound.core.errors import ProviderError, ProviderTimeout, StreamCut
from compound.core.settings import Settings
from compound.llm.base import Completion, Delta, Message, Price, StreamEvent, ToolChoice, ToolSpec, Usage
from compound.llm.endpoints import api_base, endpoint, provider_of, remote_allowed
from compound.llm.errors import retry_after, scrub, transient_status
from compound.llm.pricing import price_of
from compound.llm.toolwire import StreamedCalls, ToolNames, names_of, openai_calls, openai_messages, openai_tools

__all__ = ["LiteLLMClient", "provider_of", "remote_allowed", "to_provider_error", "usage_of"]

# litellm's acompletion builds the provider's coroutine on a worker thread, then awaits
# it: a call canceled in between (a task's cancel) leaves that coroutine never awaited.
# Nothing was sent; the warning would only be noise on the server's stderr.
UNAWAITED_DISPATCH = r"coroutine '.*acompletion_dispatch' was never awaited"
warnings.filterwarnings("ignore", message=UNAWAITED_DISPATCH, category=RuntimeWarning)


_litellm: Any = None


async def litellm_module() -> Any:
    """litellm, imported on first use in a worker thread: the import takes seconds and
    must not stall the event loop of a server that is already answering."""
    global _litellm
    if _litellm is None:
        module: Any = await asyncio.to_thread(importlib.import_module, "litellm")
        module.suppress_debug_info = True
        _litellm = module
    return _litellm


class LiteLLMClient:
    """LLMClient over litellm. One provider call per `complete()`; no retries inside."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._prices: dict[str, Price] = {}

    def api_base(self, model: str) -> str | None:
        return api_base(model, self.settings)

    def price(self, model: str) -> Price:
        if model not in self._prices:
            self._prices[model] = price_of(model, self.settings)
        return self._prices[model]

    async def warm(self) -> None:
        await litellm_module()  # the import costs seconds; pay it at start

    async def aclose(self) -> None:
        """Nothing held: litellm keeps its own module-level sessions."""

    def _kwargs(self, model: str, messages: list[Message], max_tokens: int,
                json_schema: dict[str, Any] | None, timeout_s: float | None,
                tools: Sequence[ToolSpec] | None, tool_choice: ToolChoice, names: ToolNames) -> dict[str, Any]:
        ep = endpoint(model, self.settings)
        ep.check()  # the offline guard; a missing key for anthropic/openai
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": openai_messages(messages, names),
            "max_tokens": max_tokens,
            "timeout": timeout_s or self.settings.call_timeout_s,
            "num_retries": 0,
        }
        if tools:  # OpenAI's format: litellm translates it for every other provider
            kwargs["tools"] = openai_tools(tools, names)
            kwargs["tool_choice"] = tool_choice
        if ep.base:
            kwargs["api_base"] = ep.base
        if ep.key:
            kwargs["api_key"] = ep.key
        if json_schema is not None and ep.provider == "openai":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "plan", "schema": json_schema},
            }
        return kwargs

    async def _send(self, model: str, kwargs: dict[str, Any]) -> Any:
        litellm = await litellm_module()
        secrets = (kwargs.get("api_key"),)
        try:
            return await litellm.acompletion(**kwargs)
        except Exception as exc:  # litellm raises its own tree; map it once, here
            error = to_provider_error(exc, model, secrets=secrets)
            if "response_format" not in kwargs or error.status != 400:
                raise error from None
        # Some OpenAI-compatible servers refuse json_schema output: ask again without
        # it (the prompt describes the JSON anyway). A 400 is not billed.
        del kwargs["response_format"]
        try:
            return await litellm.acompletion(**kwargs)
        except Exception as exc2:
            raise to_provider_error(exc2, model, secrets=secrets) from None

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
        names = names_of(tools, messages)
        kwargs = self._kwargs(model, messages, max_tokens, json_schema, timeout_s, tools, tool_choice, names)
        started = time.perf_counter()
        response = await self._send(model, kwargs)
        latency = time.perf_counter() - started
        usage = usage_of(response)
        choice = response.choices[0]
        text = choice.message.content or ""
        return Completion(
            text=text,
            model=model,
            usage=usage,
            cost_usd=self.price(model).cost(usage),
            latency_s=latency,
            finish_reason=getattr(choice, "finish_reason", None),
            tool_calls=openai_calls(getattr(choice.message, "tool_calls", None), names),
        )

    async def stream(
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
        names = names_of(tools, messages)
        kwargs = self._kwargs(model, messages, max_tokens, json_schema, timeout_s, tools, tool_choice, names)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        chunks = await self._send(model, kwargs)
        parts: list[str] = []
        calls = StreamedCalls(names)
        usage = Usage()
        stop: str | None = None
        try:
            async for chunk in chunks:
                if getattr(chunk, "usage", None) is not None:
                    usage = usage_of(chunk)
                for choice in chunk.choices or ():
                    text = getattr(choice.delta, "content", None)
                    if text:
                        parts.append(text)
                        yield Delta(text)
                    calls.openai_delta(getattr(choice.delta, "tool_calls", None))
                    if choice.finish_reason:
                        stop = choice.finish_reason
        except Exception as exc:
            raise to_provider_error(exc, model, secrets=(kwargs.get("api_key"),)) from None
        yield Completion(text="".join(parts), model=model, usage=usage, cost_usd=self.price(model).cost(usage),
                         latency_s=time.perf_counter() - started, finish_reason=stop, tool_calls=calls.calls())


def usage_of(response: Any) -> Usage:
    """Tokens as the provider reported them, split so input excludes cache tokens."""
    u = getattr(response, "usage", None)
    if u is None:
        return Usage()
    prompt = int(getattr(u, "prompt_tokens", 0) or 0)
    output = int(getattr(u, "completion_tokens", 0) or 0)
    cache_read = int(getattr(u, "cache_read_input_tokens", 0) or 0)
    cache_write = int(getattr(u, "cache_creation_input_tokens", 0) or 0)
    details = getattr(u, "prompt_tokens_details", None)
    if not cache_read and details is not None:
        cache_read = int(getattr(details, "cached_tokens", 0) or 0)
    # litellm reports prompt_tokens including cache reads and writes for both wires.
    inp = max(0, prompt - cache_read - cache_write)
    return Usage(input_tokens=inp, output_tokens=output, cache_read_tokens=cache_read,
                 cache_write_tokens=cache_write)


def to_provider_error(exc: BaseException, model: str, *, secrets: tuple[str | None, ...] = ()) -> ProviderError:
    """litellm's exception tree to a ProviderError; statuses by the shared table."""
    from litellm.exceptions import APIConnectionError, Timeout

    status = getattr(exc, "status_code", None)
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    response = getattr(exc, "response", None)
    real = getattr(response, "status_code", None)
    if "overloaded_error" in str(exc):
        status = 529  # litellm folds Anthropic's 529 into 500
    elif isinstance(real, int) and real >= 400:
        status = real
    if isinstance(exc, Timeout) or "timeout" in type(exc).__name__.lower():
        return ProviderTimeout(f"{model}: no answer within the call's timeout ({type(exc).__name__})",
                               model=model)
    cause = getattr(exc, "original_exception", None)  # litellm's MidStreamFallbackError
    if isinstance(cause, APIConnectionError) and not getattr(exc, "is_pre_first_chunk", True):
        return StreamCut(f"{model}: the connection dropped while the answer streamed: "
                         f"{scrub(str(getattr(cause, 'message', None) or cause), secrets)}", model=model)
    connection = isinstance(exc, APIConnectionError) and status in (None, 500)
    transient = connection or transient_status(status)
    message = scrub(str(getattr(exc, "message", None) or exc), secrets)
    headers: Any = getattr(response, "headers", None) or getattr(exc, "litellm_response_headers", None)
    return ProviderError(
        f"{model}: {type(exc).__name__} ({status or 'no status'}): {message}",
        status=status,
        body=message,
        model=model,
        retry_after_s=retry_after(headers),
        transient=transient,
    )
