"""Events are pushed, not polled: an idle SSE stream and a waiting POST /task/compound
read nothing from the store while nothing changes; a reconnect at or past the end is
closed at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from compound.api.app import create_app
from compound.core.settings import Settings
from compound.llm.base import Message
from compound.simulator import answer_for, prompt_kind
from compound.store.base import RunStore
from compound.store.users import create_token
from tests.fixtures.fakes import FakeLLM
from tests.test_live import parse_sse

PLAN = {"subtasks": [{"description": "a", "tier_hint": 1, "depends_on": []},
                     {"description": "b", "tier_hint": 1, "depends_on": [0]}]}
IDLE_S = 0.4  # a window with nothing happening: a poller every 20-50 ms reads 8-20 times in it


@dataclass
class Gated:
    app: FastAPI
    http: httpx.AsyncClient
    auth: dict[str, str]
    gate: asyncio.Event  # the planner's call answers once this is set
    fake: FakeLLM

    @property
    def store(self) -> RunStore:
        store: RunStore = self.app.state.store
        return store


@pytest.fixture
async def gated(sqlite_url: str) -> AsyncIterator[Gated]:
    gate = asyncio.Event()

    async def answer(model: str, messages: list[Message]) -> str:
        kind = prompt_kind(messages[0]["content"])
        if kind == "planner":
            await gate.wait()
        return answer_for(kind, messages[-1]["content"], 6)

    fake = FakeLLM(answer=answer)
    app = create_app(Settings(database_url=sqlite_url, rate_limit_per_minute=1000), client=fake)
    async with app.router.lifespan_context(app):
        token = create_token(app.state.store.engine, "ann")[1]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield Gated(app, http, {"Authorization": f"Bearer {token}"}, gate, fake)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a state (checked every 10 ms), failing after a generous deadline."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_a_waiting_post_task_compound_reads_nothing_until_the_plan_lands(gated: Gated) -> None:
    post = asyncio.ensure_future(gated.http.post("/task/compound", json={"prompt": "find a and find b"},
                                                 headers=gated.auth))
    # the planner's call is held and the route waits on its task's events
    await until(lambda: gated.store.hub.idle() == 1 and len(gated.fake.calls) == 1)
    reads = gated.store.stats.reads
    await asyncio.sleep(IDLE_S)
    assert gated.store.stats.reads == reads and not post.done()
    gated.gate.set()
    r = await asyncio.wait_for(post, 20)
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("planned", "executing", "completed") and r.json()["subtask_count"] >= 1


async def test_an_idle_sse_stream_reads_nothing_then_follows_to_the_end(gated: Gated) -> None:
    gated.gate.set()
    r = await gated.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN, "approve": False}, headers=gated.auth)
    task_id = r.json()["id"]
    await gated.app.state.executor.wait_planned(task_id, timeout=60)
    stream = asyncio.ensure_future(gated.http.get(f"/v1/tasks/{task_id}/events", headers=gated.auth))
    await until(lambda: gated.store.hub.idle() == 1)
    reads = gated.store.stats.reads
    await asyncio.sleep(IDLE_S)
    assert gated.store.stats.reads == reads and not stream.done()
    assert (await gated.http.post(f"/v1/tasks/{task_id}/approve", headers=gated.auth)).status_code == 200
    resp = await asyncio.wait_for(stream, 20)
    events = parse_sse(resp.text)
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "task" and events[-1]["data"]["status"] == "completed"
    assert not gated.store.hub.watched(task_id)  # the subscription ended with the stream


async def test_a_reconnect_at_or_past_the_terminal_event_is_closed_at_once(gated: Gated) -> None:
    gated.gate.set()
    r = await gated.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=gated.auth)
    task_id = r.json()["id"]
    await gated.app.state.executor.wait(task_id, timeout=60)
    last = (await gated.store.head(task_id)).event_seq
    for seen in (last, last + 5):
        resp = await asyncio.wait_for(gated.http.get(f"/v1/tasks/{task_id}/events",
                                                     headers={**gated.auth, "Last-Event-ID": str(seen)}), 5)
        assert resp.status_code == 204 and resp.text == ""  # 204: an EventSource stops reconnecting
    resp = await gated.http.get(f"/v1/tasks/{task_id}/events", headers={**gated.auth, "Last-Event-ID": str(last - 1)})
    assert [int(e["id"]) for e in parse_sse(resp.text)] == [last]
