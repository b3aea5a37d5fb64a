"""The Anthropic adapter: `anthropic/...` models through the anthropic SDK (AsyncAnthropic,
its own HTTP stack), plain and streamed, with the shared prefix marked for prompt caching."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from compound.core.settings import Settings
from compound.llm.adapter import SDKAdapter, no_tools_yet
from compound.llm.base import Completion, Delta, Message, StreamEvent, ToolChoice, ToolSpec, Usage
from compound.llm.errors import sdk_error

_EPHEMERAL = {"type": "ephemeral"}
# A cache entry lives 5 minutes from its last read (Anthropic's default TTL).
CACHE_TTL_S = 300.0
# A prefix shorter than this cannot reach the smallest minimum cacheable length (1,024
# tokens; a token is at least one byte), so its calls never wait for each other.
MIN_CACHEABLE_BYTES = 1024


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


def prefix_key(model: str, messages: list[Message]) -> str | None:
    """A digest of the prompt up to its last cache marker; None when there is none or
    it is too short to be cached."""
    marked = max((i + 1 for i, m in enumerate(messages) if m.get("cache")), default=0)
    if not marked:
        return None
    digest = hashlib.blake2b(model.encode(), digest_size=16)
    size = 0
    for m in messages[:marked]:
        data = m["content"].encode()
        size += len(data)
        digest.update(m["role"].encode() + b"\0" + data + b"\0")
    return digest.hexdigest() if size >= MIN_CACHEABLE_BYTES else None


class AnthropicClient(SDKAdapter[Any]):
    """LLMClient over AsyncAnthropic. One provider call per `complete()`; no retries inside.
    The JSON schema is not sent: the planner's prompt states the shape (docs/design.md).

    Prompt caching: a cache entry is readable only once the call writing it has begun
    to answer, so calls sharing a new prefix (a task's first wave of subtasks) would
    each write it. The first goes alone, streamed; the others wait for its first event
    (the prefix is then cached) and read it. Prefixes known to be warm go at once."""

    provider = "anthropic"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._writing: dict[str, asyncio.Event] = {}  # prefix -> set when its writer began answering
        self._warm: dict[str, float] = {}  # prefix -> when its cache entry expires (monotonic)

    async def _turn(self, key: str) -> asyncio.Event | None:
        """Wait until this prefix is cached; an Event when this call is to write it."""
        if self._warm.get(key, 0.0) > time.monotonic():
            self._warm[key] = time.monotonic() + CACHE_TTL_S  # a read refreshes the entry
            return None
        writing = self._writing.get(key)
        if writing is not None:
            await writing.wait()
            return None
        gate = self._writing[key] = asyncio.Event()
        return gate

    def _written(self, key: str, gate: asyncio.Event, *, warm: bool = True) -> None:
        gate.set()
        self._writing.pop(key, None)
        if not warm:  # the writer failed before answering: the others go, and write
            return
        now = time.monotonic()
        self._warm[key] = now + CACHE_TTL_S
        if len(self._warm) > 4096:  # a long-running server: forget expired prefixes
            self._warm = {k: t for k, t in self._warm.items() if t > now}

    def _make(self, base: str, key: str) -> Any:
        import anthropic
        from anthropic._constants import DEFAULT_CONNECTION_LIMITS

        http = self.http_client(anthropic, type(DEFAULT_CONNECTION_LIMITS))
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
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        no_tools_yet(tools, tool_choice)
        prefix = prefix_key(model, messages)
        gate = await self._turn(prefix) if prefix is not None else None
        if gate is not None:  # this call writes the prefix: stream it to release the others early
            assert prefix is not None
            try:
                from compound.llm import collect

                return await collect(self._events(model, messages, max_tokens, timeout_s,
                                                  on_start=lambda: self._written(prefix, gate)))
            finally:
                if not gate.is_set():
                    self._written(prefix, gate, warm=False)
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
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[StreamEvent]:
        no_tools_yet(tools, tool_choice)
        prefix = prefix_key(model, messages)
        gate = await self._turn(prefix) if prefix is not None else None
        if gate is None:
            async for event in self._events(model, messages, max_tokens, timeout_s):
                yield event
            return
        assert prefix is not None
        try:
            async for event in self._events(model, messages, max_tokens, timeout_s,
                                            on_start=lambda: self._written(prefix, gate)):
                yield event
        finally:
            if not gate.is_set():
                self._written(prefix, gate, warm=False)

    async def _events(self, model: str, messages: list[Message], max_tokens: int, timeout_s: float | None,
                      on_start: Callable[[], None] | None = None) -> AsyncIterator[StreamEvent]:
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s)
        started = time.perf_counter()
        parts: list[str] = []
        start_usage: Any = None
        final_usage: Any = None
        stop: str | None = None
        answered = False
        try:
            events = await client.messages.create(stream=True, **kwargs)
            answered = True  # the 200 came: from here on its body is read
            async with events:
                async for event in events:
                    kind = event.type
                    if kind == "content_block_delta":
                        if event.delta.type == "text_delta" and event.delta.text:
                            parts.append(event.delta.text)
                            yield Delta(event.delta.text)
                    elif kind == "message_start":
                        start_usage = event.message.usage
                        if on_start is not None:
                            on_start()  # the prompt is read: its cache entry exists now
                    elif kind == "message_delta":
                        final_usage = event.usage
                        stop = event.delta.stop_reason
        except Exception as exc:
            raise sdk_error(exc, model, secrets=(key,), midstream=answered) from None
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
