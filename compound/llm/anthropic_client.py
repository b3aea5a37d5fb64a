"""The Anthropic adapter: `anthropic/...` models through the anthropic SDK (AsyncAnthropic,
its own HTTP stack), plain and streamed, with the shared prefix marked for prompt caching."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from compound.core.settings import Settings
from compound.llm.adapter import SDKAdapter
from compound.llm.base import Completion, Delta, Message, StreamEvent, Usage
from compound.llm.errors import sdk_error

_EPHEMERAL = {"type": "ephemeral"}


def to_anthropic(messages: list[Message]) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(system, messages) for the Messages API. System messages join the `system`
    blocks; consecutive messages of one role become one turn of several text blocks;
    a message marked `cache` gets a cache_control breakpoint (the prefix up to it is
    cached). Plain strings where no block is needed (less to encode)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        block: dict[str, Any] = {"type": "text", "text": m["content"]}
        if m.get("cache"):
            block["cache_control"] = _EPHEMERAL
        if m["role"] == "system":
            system.append(block)
        elif turns and turns[-1]["role"] == m["role"]:
            turns[-1]["content"].append(block)
        else:
            turns.append({"role": m["role"], "content": [block]})
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and "cache_control" not in blocks[0]:
            turn["content"] = blocks[0]["text"]
    if not system:
        return None, turns
    if len(system) == 1 and "cache_control" not in system[0]:
        return system[0]["text"], turns
    return system, turns


def usage_of(u: Any) -> Usage:
    """Anthropic's usage is already split: input_tokens excludes cache reads and writes."""
    if u is None:
        return Usage()
    return Usage(
        input_tokens=int(getattr(u, "input_tokens", 0) or 0),
        output_tokens=int(getattr(u, "output_tokens", 0) or 0),
        cache_read_tokens=int(getattr(u, "cache_read_input_tokens", 0) or 0),
        cache_write_tokens=int(getattr(u, "cache_creation_input_tokens", 0) or 0),
    )


class AnthropicClient(SDKAdapter[Any]):
    """LLMClient over AsyncAnthropic. One provider call per `complete()`; no retries inside.
    The JSON schema is not sent: the planner's prompt states the shape (docs/design.md)."""

    provider = "anthropic"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)

    def _make(self, base: str, key: str) -> Any:
        import anthropic
        from anthropic._constants import DEFAULT_CONNECTION_LIMITS

        # The SDK's own default client (its HTTP stack and socket options), pool resized.
        http = anthropic.DefaultAsyncHttpxClient(limits=self.pool_limits(type(DEFAULT_CONNECTION_LIMITS)))
        return anthropic.AsyncAnthropic(api_key=key, base_url=base, max_retries=0,
                                        timeout=self.settings.call_timeout_s, http_client=http)

    def _request(self, model: str, messages: list[Message], max_tokens: int,
                 timeout_s: float | None) -> tuple[Any, dict[str, Any], str | None]:
        ep, client = self.client_for(model)
        system, turns = to_anthropic(messages)
        kwargs: dict[str, Any] = {"model": ep.name, "messages": turns, "max_tokens": max_tokens,
                                  "timeout": timeout_s or self.settings.call_timeout_s}
        if system is not None:
            kwargs["system"] = system
        return client, kwargs, ep.key

    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,  # noqa: ARG002  (the prompt states the shape)
        timeout_s: float | None = None,
    ) -> Completion:
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s)
        started = time.perf_counter()
        try:
            response = await client.messages.create(**kwargs)
        except Exception as exc:
            raise sdk_error(exc, model, secrets=(key,)) from None
        usage = usage_of(response.usage)
        text = "".join(b.text for b in response.content if b.type == "text")
        return Completion(text=text, model=model, usage=usage, cost_usd=self.price(model).cost(usage),
                          latency_s=time.perf_counter() - started, finish_reason=response.stop_reason)

    async def stream(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,  # noqa: ARG002  (the prompt states the shape)
        timeout_s: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s)
        started = time.perf_counter()
        parts: list[str] = []
        start_usage: Any = None
        final_usage: Any = None
        stop: str | None = None
        try:
            events = await client.messages.create(stream=True, **kwargs)
            async with events:
                async for event in events:
                    kind = event.type
                    if kind == "content_block_delta":
                        if event.delta.type == "text_delta" and event.delta.text:
                            parts.append(event.delta.text)
                            yield Delta(event.delta.text)
                    elif kind == "message_start":
                        start_usage = event.message.usage
                    elif kind == "message_delta":
                        final_usage = event.usage
                        stop = event.delta.stop_reason
        except Exception as exc:
            raise sdk_error(exc, model, secrets=(key,)) from None
        usage = usage_of(start_usage)
        if final_usage is not None:  # message_delta's counts are cumulative and final
            out = final_usage.output_tokens
            usage = Usage(
                input_tokens=getattr(final_usage, "input_tokens", None) or usage.input_tokens,
                output_tokens=out if out is not None else usage.output_tokens,
                cache_read_tokens=getattr(final_usage, "cache_read_input_tokens", None) or usage.cache_read_tokens,
                cache_write_tokens=(getattr(final_usage, "cache_creation_input_tokens", None)
                                    or usage.cache_write_tokens),
            )
        yield Completion(text="".join(parts), model=model, usage=usage, cost_usd=self.price(model).cost(usage),
                         latency_s=time.perf_counter() - started, finish_reason=stop)
