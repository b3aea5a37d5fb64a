"""The Anthropic adapter: `anthropic/...` models through the anthropic SDK (AsyncAnthropic,
its own HTTP stack), plain and streamed, with the shared prefix marked for prompt caching."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from compound.core.errors import ProviderError
from compound.core.settings import Settings
from compound.llm.adapter import SDKAdapter
from compound.llm.base import Completion, Delta, Message, StreamEvent, ToolCall, ToolChoice, ToolSpec, Usage
from compound.llm.errors import scrub, sdk_error, stream_error
from compound.llm.toolwire import StreamedCalls, ToolNames, arguments_text, names_of, parse_arguments

_EPHEMERAL = {"type": "ephemeral"}
# A cache entry lives 5 minutes from its last read (Anthropic's default TTL).
CACHE_TTL_S = 300.0
# A prefix shorter than this cannot reach the smallest minimum cacheable length (1,024
# tokens; a token is at least one byte), so its calls never wait for each other.
MIN_CACHEABLE_BYTES = 1024


def to_anthropic(messages: list[Message], names: ToolNames | None = None,
                 ) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(system, messages) for the Messages API. System messages join the `system`
    blocks; consecutive messages of one role become one turn of several blocks (a tool
    result is a user turn's `tool_result` block, an assistant's tool calls its
    `tool_use` blocks); a message marked `cache` gets a cache_control breakpoint (the
    prefix up to it is cached). Plain strings where no block is needed (less to encode)."""
    names = names or ToolNames()
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        blocks: list[dict[str, Any]]
        if role == "tool":
            role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""), "content": m["content"]}]
            if m.get("is_error"):
                blocks[0]["is_error"] = True
        else:
            blocks = [{"type": "text", "text": m["content"]}]
            calls = m.get("tool_calls") or []
            if calls:
                blocks = blocks if m["content"].strip() else []  # the API refuses a blank text block
                blocks += [{"type": "tool_use", "id": c.id, "name": names.wire(c.name), "input": c.arguments}
                           for c in calls]
        if m.get("cache"):
            blocks[-1]["cache_control"] = _EPHEMERAL
        if role == "system":
            system += blocks
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text" and "cache_control" not in blocks[0]:
            turn["content"] = blocks[0]["text"]
    if not system:
        return None, turns
    if len(system) == 1 and "cache_control" not in system[0]:
        return system[0]["text"], turns
    return system, turns


def tool_fields(tools: Sequence[ToolSpec] | None, tool_choice: ToolChoice, names: ToolNames) -> dict[str, Any]:
    """`tools` and `tool_choice` for the Messages API (nothing when no tools are given)."""
    if not tools:
        return {}
    return {"tools": [{"name": names.wire(t.name), "description": t.description,
                       "input_schema": t.input_schema or {"type": "object", "properties": {}}} for t in tools],
            "tool_choice": {"type": tool_choice}}


def tool_calls_of(content: list[dict[str, Any]], names: ToolNames) -> tuple[ToolCall, ...]:
    """The `tool_use` blocks of an answer (its JSON) as ToolCalls."""
    return tuple(ToolCall(id=str(b.get("id", "")), name=names.name(str(b.get("name", ""))),
                          arguments=(dict(b["input"]) if isinstance(b.get("input"), dict)
                                     else parse_arguments(str(b.get("input", "")))))
                 for b in content if b.get("type") == "tool_use")


def usage_of(u: Any) -> Usage:
    """Anthropic's usage (the answer's JSON) is already split: input_tokens excludes
    cache reads and writes."""
    if not isinstance(u, dict):
        return Usage()
    return Usage(
        input_tokens=int(u.get("input_tokens") or 0),
        output_tokens=int(u.get("output_tokens") or 0),
        cache_read_tokens=int(u.get("cache_read_input_tokens") or 0),
        cache_write_tokens=int(u.get("cache_creation_input_tokens") or 0),
    )


def content_of(data: Any, model: str, secrets: tuple[str | None, ...] = ()) -> list[dict[str, Any]]:
    """The content blocks of a Messages API answer's JSON; a ProviderError when the
    body is not a message (its body shown with the secrets scrubbed)."""
    content = data.get("content") if isinstance(data, dict) else None
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise ProviderError(f"{model}: the answer is not a Messages API message (no list of content blocks)",
                            status=200, body=scrub(str(data), secrets), model=model, transient=False)
    return content


def tracing_configured() -> bool:
    """Whether this process records OpenTelemetry spans: a tracer provider is set (or
    named by OTEL_PYTHON_TRACER_PROVIDER). Without one, the SDK's spans (on by default)
    record nothing and still cost ~0.03 ms a call, so the client is made without them;
    with one, the SDK's own option and ANTHROPIC_OPEN_TELEMETRY* variables apply."""
    from opentelemetry import trace

    try:
        provider = trace.get_tracer_provider()
    except Exception:  # a provider named but not loadable: the SDK's own handling decides
        return True
    return not isinstance(provider, trace.ProxyTracerProvider)


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
        for c in m.get("tool_calls") or ():  # a turn's calls are part of the prefix too
            digest.update(f"{c.id}\0{c.name}\0{arguments_text(c)}\0".encode())
        if "tool_call_id" in m:
            digest.update(f"{m['tool_call_id']}\0{m.get('is_error', False)}\0".encode())
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
                                        timeout=self.settings.call_timeout_s, http_client=http,
                                        open_telemetry=None if tracing_configured() else False)

    def _request(self, model: str, messages: list[Message], max_tokens: int, timeout_s: float | None,
                 tools: Sequence[ToolSpec] | None, tool_choice: ToolChoice,
                 names: ToolNames) -> tuple[Any, dict[str, Any], str | None]:
        ep, client = self.client_for(model)
        system, turns = to_anthropic(messages, names)
        kwargs: dict[str, Any] = {"model": ep.name, "messages": turns, "max_tokens": max_tokens,
                                  "timeout": timeout_s or self.settings.call_timeout_s,
                                  **tool_fields(tools, tool_choice, names)}
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
        names = names_of(tools, messages)
        prefix = prefix_key(model, messages)
        gate = await self._turn(prefix) if prefix is not None else None
        if gate is not None:  # this call writes the prefix: stream it to release the others early
            assert prefix is not None
            try:
                from compound.llm import collect

                return await collect(self._events(model, messages, max_tokens, timeout_s, tools, tool_choice,
                                                  names, on_start=lambda: self._written(prefix, gate)))
            finally:
                if not gate.is_set():
                    self._written(prefix, gate, warm=False)
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s, tools, tool_choice, names)
        started = time.perf_counter()
        try:
            # The answer's JSON read as it is (the SDK's raw response, its public API):
            # building the SDK's typed Message costs ~0.15 ms a call (docs/benchmarks.md, "Load").
            raw = await client.messages.with_raw_response.create(**kwargs)
            data = await raw.json()
        except Exception as exc:
            raise sdk_error(exc, model, secrets=(key,)) from None
        content = content_of(data, model, secrets=(key,))
        usage = usage_of(data.get("usage"))
        text = "".join(str(b.get("text", "")) for b in content if b.get("type") == "text")
        stop = data.get("stop_reason")
        return Completion(text=text, model=model, usage=usage, cost_usd=self.price(model).cost(usage),
                          latency_s=time.perf_counter() - started,
                          finish_reason=stop if isinstance(stop, str) else None,
                          tool_calls=tool_calls_of(content, names))

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
        names = names_of(tools, messages)
        prefix = prefix_key(model, messages)
        gate = await self._turn(prefix) if prefix is not None else None
        if gate is None:
            async for event in self._events(model, messages, max_tokens, timeout_s, tools, tool_choice, names):
                yield event
            return
        assert prefix is not None
        try:
            async for event in self._events(model, messages, max_tokens, timeout_s, tools, tool_choice, names,
                                            on_start=lambda: self._written(prefix, gate)):
                yield event
        finally:
            if not gate.is_set():
                self._written(prefix, gate, warm=False)

    async def _events(self, model: str, messages: list[Message], max_tokens: int, timeout_s: float | None,
                      tools: Sequence[ToolSpec] | None, tool_choice: ToolChoice, names: ToolNames,
                      on_start: Callable[[], None] | None = None) -> AsyncIterator[StreamEvent]:
        """The answer streamed, its events read as JSON from the SDK's raw Server-Sent
        Events (`AsyncStream.raw_events`, its public API): building the SDK's typed event
        for each piece cost a streamed plan about as much as four plain calls."""
        import anthropic

        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s, tools, tool_choice, names)
        started = time.perf_counter()
        got = _Streamed(names)
        answered = False
        try:
            async with client.messages.with_streaming_response.create(stream=True, **kwargs) as response:
                answered = True  # the 200 came: from here on its body is read
                async for sse in anthropic.AsyncStream.raw_events(response.http_response):
                    if sse.event == "error":
                        raise stream_error(sse.data, model, secrets=(key,))
                    if sse.event is None or sse.event == "ping" or not sse.data:
                        continue
                    text = got.event(json.loads(sse.data), on_start)
                    if text:
                        yield Delta(text)
        except ProviderError:
            raise
        except Exception as exc:
            raise sdk_error(exc, model, secrets=(key,), midstream=answered) from None
        usage = got.usage()
        yield Completion(text="".join(got.parts), model=model, usage=usage, cost_usd=self.price(model).cost(usage),
                         latency_s=time.perf_counter() - started, finish_reason=got.stop, tool_calls=got.calls.calls())


class _Streamed:
    """A streamed answer's events (their JSON) as they come: the text's pieces, the
    tool calls, the usage of `message_start` and the final counts of `message_delta`."""

    def __init__(self, names: ToolNames) -> None:
        self.parts: list[str] = []
        self.calls = StreamedCalls(names)
        self.start_usage: Any = None
        self.final_usage: Any = None
        self.stop: str | None = None

    def event(self, data: Any, on_start: Callable[[], None] | None) -> str | None:
        """Take one event; the text it adds, if any."""
        if not isinstance(data, dict):
            return None
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                text = str(delta["text"])
                self.parts.append(text)
                return text
            if delta.get("type") == "input_json_delta":
                self.calls.piece(int(data.get("index", 0)), str(delta.get("partial_json", "")))
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                whole = block.get("input")
                self.calls.start(int(data.get("index", 0)), id=str(block.get("id", "")),
                                 name=str(block.get("name", "")), whole=whole if isinstance(whole, dict) else None)
        elif kind == "message_start":
            self.start_usage = (data.get("message") or {}).get("usage")
            if on_start is not None:
                on_start()  # the prompt is read: its cache entry exists now
        elif kind == "message_delta":
            self.final_usage = data.get("usage")
            stop = (data.get("delta") or {}).get("stop_reason")
            self.stop = stop if isinstance(stop, str) else None
        return None

    def usage(self) -> Usage:
        start = usage_of(self.start_usage)
        if not isinstance(self.final_usage, dict):
            return start
        final = usage_of(self.final_usage)  # message_delta's counts are cumulative and final
        return Usage(
            input_tokens=final.input_tokens or start.input_tokens,
            output_tokens=(final.output_tokens if self.final_usage.get("output_tokens") is not None
                           else start.output_tokens),
            cache_read_tokens=final.cache_read_tokens or start.cache_read_tokens,
            cache_write_tokens=final.cache_write_tokens or start.cache_write_tokens,
        )
