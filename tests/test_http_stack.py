"""The SDKs' HTTP stack is chosen by COMPOUND_HTTP_TRANSPORT and speaks both wires;
the collector is settled once start-up is over."""

from __future__ import annotations

import gc

import pytest

from compound.core.heap import THRESHOLDS, settle_heap
from compound.core.settings import Settings
from compound.llm import build_client
from compound.llm.adapter import http_transport
from compound.llm.base import Message
from compound.simulator import Simulator

MESSAGES: list[Message] = [{"role": "user", "content": "hello"}]


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
        await client.aclose()


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
