"""A streamed answer that fails in the middle, over the providers' real wire formats
(the simulator answers 200, streams some pieces, then sends the provider's error event
or drops the connection): each adapter names the failure by what it stands for (an
overloaded or server error is retried, a request error is not), a dropped connection is
retried and booked at its worst case (the provider was writing, and may bill it), and a
chat client still gets the whole answer."""

from __future__ import annotations

from typing import Any

import pytest

from compound.core.errors import ProviderError, StreamCut
from compound.core.settings import ModelConfig, Settings
from compound.llm import build_client
from compound.llm.base import Delta
from compound.simulator import Failure, Simulator
from compound.store.models import TaskStatus
from tests.test_doors_stream import streamed

MODELS = ["anthropic/claude-haiku-4-5", "openai/gpt-4.1", "hosted_vllm/tiny"]  # SDK, SDK, litellm
MESSAGES = [{"role": "user", "content": "Explain quicksort in detail, step by step, with an example."}]


def settings_for(sim_settings: Settings, sim: Simulator, transport: str) -> Settings:
    models = dict(sim_settings.models)
    models["hosted_vllm/tiny"] = ModelConfig(api_base=sim.url + "/v1",  # type: ignore[attr-defined]
                                             input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    return sim_settings.model_copy(update={"models": models, "http_transport": transport})


async def stream_until_it_fails(settings: Settings, model: str) -> tuple[int, ProviderError]:
    client = build_client(settings)
    pieces = 0
    try:
        async for event in client.stream(model=model, messages=MESSAGES, max_tokens=500):  # type: ignore[arg-type]
            pieces += isinstance(event, Delta)
    except ProviderError as exc:
        return pieces, exc
    finally:
        await client.aclose()
    raise AssertionError("the stream did not fail")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("model", MODELS)
async def test_an_overloaded_error_event_midway_is_transient(sim_settings: Settings, sim: Simulator,
                                                             model: str, transport: str) -> None:
    sim.fail(Failure(529, midstream="error", after_pieces=2))
    pieces, err = await stream_until_it_fails(settings_for(sim_settings, sim, transport), model)
    assert pieces == 2  # the answer had begun
    assert err.transient and not isinstance(err, StreamCut)
    if not model.startswith("hosted_vllm/"):  # litellm folds every mid-stream error into a 500
        assert err.status == 529 and "in the stream" in err.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("model", MODELS[:2])
async def test_a_request_error_event_midway_is_permanent(sim_settings: Settings, sim: Simulator,
                                                         model: str, transport: str) -> None:
    sim.fail(Failure(400, midstream="error", after_pieces=1))
    pieces, err = await stream_until_it_fails(settings_for(sim_settings, sim, transport), model)
    assert pieces == 1 and err.status == 400 and not err.transient


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("model", MODELS)
async def test_a_connection_dropped_midway_is_a_transient_stream_cut(sim_settings: Settings, sim: Simulator,
                                                                     model: str, transport: str) -> None:
    sim.fail(Failure(500, midstream="drop", after_pieces=3))
    pieces, err = await stream_until_it_fails(settings_for(sim_settings, sim, transport), model)
    assert pieces == 3
    assert isinstance(err, StreamCut) and err.transient and "dropped" in err.message


def test_a_call_not_streamed_gets_the_plain_error(sim: Simulator) -> None:
    import httpx

    sim.fail(Failure(529, midstream="error"))
    r = httpx.post(sim.url + "/v1/messages", json={  # type: ignore[attr-defined]
        "model": "claude-haiku-4-5", "max_tokens": 50, "messages": MESSAGES})
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("midstream", ["error", "drop"])
async def test_a_synthesis_cut_midway_is_retried_and_the_chat_client_gets_it_whole(
        served: Any, sim: Simulator, midstream: str) -> None:
    sim.fail(Failure(529, midstream=midstream, after_pieces=2, kind="synthesizer"))  # type: ignore[arg-type]
    task_id, deltas, error = await streamed(served, sim)
    assert error is None
    snap = await served.app.state.store.snapshot(task_id)
    assert snap["status"] == TaskStatus.completed
    assert "".join(deltas) == snap["result"]  # the retry said the same: the client saw it once
    assert len(sim.calls("synthesizer")) == 2
    rows = [r for r in await served.app.state.store.ledger_rows(task_id) if r["kind"] == "synthesis"]
    assert [r["status"] for r in rows] == ["lost" if midstream == "drop" else "error", "ok"]
    cut = rows[0]
    if midstream == "drop":  # the provider was writing it: counted at the reservation
        assert cut["cost_usd"] == pytest.approx(cut["reserved_usd"]) and cut["cost_usd"] > 0
    else:  # the provider said it failed: not billed
        assert cut["cost_usd"] == 0


@pytest.mark.parametrize(("data", "status", "transient"), [
    ('{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}', 529, True),
    ('{"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}', 400, False),
    ("the server fell over", 500, True),  # not JSON: the server's failure, as an unnamed one
])
def test_an_error_event_read_raw_says_its_status_and_never_the_key(data: str, status: int, transient: bool) -> None:
    from compound.llm.errors import stream_error

    key = "sk-ant-api03-0123456789abcdefXYZ"
    err = stream_error(data.replace("}}", f', "echo": "{key}"}}}}') if data.startswith("{") else f"{data} {key}",
                       "anthropic/claude-haiku-4-5", secrets=(key,))
    assert (err.status, err.transient) == (status, transient)
    assert "in the stream" in err.message and key not in err.message and key not in (err.body or "")
