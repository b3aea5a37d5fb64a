"""The OpenAI adapter: `openai/...` models, and any OpenAI-compatible server behind one
(vLLM, llama.cpp, llama-cpp-python, Ollama, LM Studio, a gateway), through AsyncOpenAI;
structured output negotiated per model: json_schema, else json_object, else the prompt."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from compound.core.logging import get_logger
from compound.core.settings import Settings
from compound.llm.adapter import SDKAdapter
from compound.llm.base import Completion, Delta, Message, StreamEvent, Usage
from compound.llm.errors import names_response_format, sdk_error

log = get_logger(__name__)

# Ways to ask for JSON, best first; "text" sends no response_format (the prompt says it).
FORMATS = ("json_schema", "json_object", "text")
# Models that take max_completion_tokens and refuse max_tokens (as litellm maps them).
_COMPLETION_TOKENS_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def usage_of(u: Any) -> Usage:
    """OpenAI's prompt_tokens include cached tokens: split them out (Usage's convention)."""
    if u is None:
        return Usage()
    prompt = int(u.prompt_tokens or 0)
    details = getattr(u, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return Usage(input_tokens=max(0, prompt - cached), output_tokens=int(u.completion_tokens or 0),
                 cache_read_tokens=cached)


class OpenAIClient(SDKAdapter[Any]):
    """LLMClient over AsyncOpenAI. One provider call per `complete()`, except once per
    model and process when the endpoint refuses a response_format (one more, without it)."""

    provider = "openai"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._format: dict[str, int] = {}  # model -> index into FORMATS that it accepts

    def format_for(self, model: str) -> str:
        return FORMATS[self._format.get(model, 0)]

    def _make(self, base: str, key: str) -> Any:
        import httpx
        import openai

        http = self.http_client(openai, httpx.Limits)
        return openai.AsyncOpenAI(api_key=key, base_url=base, max_retries=0,
                                  timeout=self.settings.call_timeout_s, http_client=http)

    def _request(self, model: str, messages: list[Message], max_tokens: int,
                 timeout_s: float | None) -> tuple[Any, dict[str, Any], str | None]:
        ep, client = self.client_for(model)
        limit = "max_completion_tokens" if ep.name.startswith(_COMPLETION_TOKENS_PREFIXES) else "max_tokens"
        kwargs: dict[str, Any] = {
            "model": ep.name,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            limit: max_tokens,
            "timeout": timeout_s or self.settings.call_timeout_s,
        }
        return client, kwargs, ep.key

    async def _send(self, client: Any, model: str, kwargs: dict[str, Any], key: str | None,
                    schema: dict[str, Any] | None) -> Any:
        """One call, or more while the endpoint refuses the response_format asked: each
        refusal steps down a format and is remembered for the model, for this process."""
        while True:
            mode = self.format_for(model) if schema is not None else "text"
            fmt = response_format(mode, schema) if schema is not None else None
            if fmt is not None:
                kwargs["response_format"] = fmt
            else:
                kwargs.pop("response_format", None)
            try:
                return await client.chat.completions.create(**kwargs)
            except Exception as exc:
                error = sdk_error(exc, model, secrets=(key,))
                if fmt is None or not names_response_format(error):
                    raise error from None
                self._format[model] = FORMATS.index(mode) + 1
                log.warning("endpoint refused a response_format; stepping down for this model",
                            model=model, refused=mode, now=self.format_for(model), status=error.status)

    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s)
        started = time.perf_counter()
        response = await self._send(client, model, kwargs, key, json_schema)
        usage = usage_of(response.usage)
        choice = response.choices[0]
        return Completion(text=choice.message.content or "", model=model, usage=usage,
                          cost_usd=self.price(model).cost(usage), latency_s=time.perf_counter() - started,
                          finish_reason=choice.finish_reason)

    async def stream(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        parts: list[str] = []
        usage = Usage()
        stop: str | None = None
        chunks = await self._send(client, model, kwargs, key, json_schema)
        try:
            async with chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = usage_of(chunk.usage)
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta is not None else None
                        if text:
                            parts.append(text)
                            yield Delta(text)
                        if choice.finish_reason:
                            stop = choice.finish_reason
        except Exception as exc:  # the 200 came: the body was being read
            raise sdk_error(exc, model, secrets=(key,), midstream=True) from None
        yield Completion(text="".join(parts), model=model, usage=usage, cost_usd=self.price(model).cost(usage),
                         latency_s=time.perf_counter() - started, finish_reason=stop)
