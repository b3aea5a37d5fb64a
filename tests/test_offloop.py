"""The server's model calls run on a loop of their own (llm/offloop.py): results, errors,
cancellation and streams cross between the loops intact; the SDKs' HTTP stack is chosen
by COMPOUND_HTTP_TRANSPORT; the collector is settled once start-up is over."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from compound.core.errors import ProviderError
from compound.core.heap import THRESHOLDS, settle_heap
from compound.core.settings import Settings
from compound.llm import build_client
from compound.llm.adapter import http_transport
from compound.llm.base import Completion, Delta, Message, StreamEvent, Usage
from compound.llm.offloop import CallLoopClient
from compound.llm.simulator import Simulator

MESSAGES: list[Message] = [{"role": "user", "content": "hello"}]


class Recorder:
    """An LLMClient that notes the thread each call ran on, and can hang or fail."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.canceled = asyncio.Event()  # set from the call loop: read via is_set() only
        self.hang = False
        self.fail: BaseException | None = None
        self.closed_on: int | None = None
        self.stream_closed = threading.Event()

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None = None, timeout_s: float | None = None) -> Completion:
        self.threads.append(threading.get_ident())
        if self.fail is not None:
            raise self.fail
        if self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.canceled.set()
                raise
        return Completion(text=f"{model}: {messages[-1]['content']}", model=model,
                          usage=Usage(input_tokens=1, output_tokens=2), cost_usd=0.5)

    async def stream(self, *, model: str, messages: list[Message], max_tokens: int,
                     json_schema: dict[str, Any] | None = None,
                     timeout_s: float | None = None) -> AsyncIterator[StreamEvent]:
        self.threads.append(threading.get_ident())
        try:
            for piece in ("one ", "two ", "three"):
                yield Delta(piece)
                if self.fail is not None:
                    raise self.fail
                if self.hang:
                    await asyncio.sleep(3600)
            yield Completion(text="one two three", model=model, usage=Usage(input_tokens=1, output_tokens=3),
                             cost_usd=0.1)
        finally:
            self.stream_closed.set()

    async def aclose(self) -> None:
        self.closed_on = threading.get_ident()


async def test_calls_run_on_the_call_thread_and_come_back_whole() -> None:
    inner = Recorder()
    client = CallLoopClient(inner)
    try:
        out = await client.complete(model="m", messages=MESSAGES, max_tokens=5)
        assert out.text == "m: hello" and out.cost_usd == 0.5
        assert inner.threads and inner.threads[0] != threading.get_ident()
        events = [e async for e in client.stream(model="m", messages=MESSAGES, max_tokens=5)]
        assert [e.text for e in events if isinstance(e, Delta)] == ["one ", "two ", "three"]
        assert isinstance(events[-1], Completion) and events[-1].text == "one two three"
        assert inner.threads[1] == inner.threads[0]  # one call thread
    finally:
        await client.aclose()
    assert inner.closed_on == inner.threads[0]  # the SDK clients are closed on their own loop
    assert not client._thread.is_alive()


async def test_errors_cross_as_they_are() -> None:
    inner = Recorder()
    inner.fail = ProviderError("simulated 529", status=529, model="m")
    client = CallLoopClient(inner)
    try:
        with pytest.raises(ProviderError) as err:
            await client.complete(model="m", messages=MESSAGES, max_tokens=5)
        assert err.value is inner.fail
        pieces: list[str] = []
        with pytest.raises(ProviderError) as err2:
            async for event in client.stream(model="m", messages=MESSAGES, max_tokens=5):
                pieces.append(event.text)
        assert err2.value is inner.fail and pieces == ["one "]  # what came before the error still came
    finally:
        await client.aclose()


async def test_cancelling_the_await_cancels_the_call_on_its_loop() -> None:
    inner = Recorder()
    inner.hang = True
    client = CallLoopClient(inner)
    try:
        call = asyncio.create_task(client.complete(model="m", messages=MESSAGES, max_tokens=5))
        while not inner.threads:  # the call has begun on the call loop
            await asyncio.sleep(0.001)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        while not inner.canceled.is_set():
            await asyncio.sleep(0.001)
        # A deadline of the caller's is a cancellation too.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.complete(model="m", messages=MESSAGES, max_tokens=5)
    finally:
        await client.aclose()


async def test_a_reader_that_stops_early_stops_the_stream() -> None:
    inner = Recorder()
    inner.hang = True
    client = CallLoopClient(inner)
    try:
        events = client.stream(model="m", messages=MESSAGES, max_tokens=5)
        first = await anext(events)
        assert first.text == "one "
        await events.aclose()  # type: ignore[attr-defined]
        assert await asyncio.to_thread(inner.stream_closed.wait, 10)
    finally:
        await client.aclose()


async def test_the_sdk_adapters_answer_through_the_call_loop(sim: Simulator, sim_settings: Settings) -> None:
    client = CallLoopClient(build_client(sim_settings))
    try:
        for model in ("anthropic/claude-haiku-4-5", "openai/gpt-4.1-mini"):
            out = await client.complete(model=model, messages=MESSAGES, max_tokens=64)
            assert out.text and out.usage.output_tokens > 0 and out.cost_usd > 0
            events = [e async for e in client.stream(model=model, messages=MESSAGES, max_tokens=64)]
            assert isinstance(events[-1], Completion)
            assert "".join(e.text for e in events[:-1]) == events[-1].text
    finally:
        await client.aclose()
    assert len(sim.calls()) == 4


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_both_http_stacks_speak_both_wires(sim: Simulator, sim_settings: Settings, transport: str) -> None:
    settings = sim_settings.model_copy(update={"http_transport": transport})
    client = build_client(settings)
    try:
        for model in ("anthropic/claude-haiku-4-5", "openai/gpt-4.1-mini"):
            out = await client.complete(model=model, messages=MESSAGES, max_tokens=64)
            assert out.text and out.usage.input_tokens > 0
            http = client.adapter_for(model).prepare(model)[1]._client  # type: ignore[attr-defined]
            transports = {type(t).__name__ for t in [http._transport, *http._mounts.values()] if t is not None}
            assert ("AiohttpTransport" in transports) == (transport == "aiohttp"), transports
    finally:
        await client.aclose()  # type: ignore[attr-defined]


def test_auto_transport_is_aiohttp_unless_a_proxy_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from compound.llm.adapter import PROXY_VARIABLES

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert http_transport(Settings()) == "aiohttp"
    assert http_transport(Settings(http_transport="httpx")) == "httpx"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert http_transport(Settings()) == "httpx"  # only the httpx stack reads proxy variables
    assert http_transport(Settings(http_transport="aiohttp")) == "aiohttp"
    monkeypatch.setenv("COMPOUND_HTTP_TRANSPORT", "carrier-pigeon")
    with pytest.raises(ValueError, match="http_transport"):
        Settings()


def test_settle_heap_freezes_start_up_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # the imported modules' objects, at least
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
