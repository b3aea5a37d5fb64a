"""Every host of the engine (executor/host.py) through the one ExecutorHost protocol:
the plain Executor on this loop and the child process. A task's events reach this
loop's subscribers once and in order, a streamed answer reaches a listener here,
cancel and approve say what happened, and a stop leaves running tasks for the next
start. (Queue mode's host is run the same way by tests/test_scale.py and
tests/test_queue_race.py, on PostgreSQL with real workers.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from compound.core.errors import Conflict, NotFound
from compound.core.settings import Settings
from compound.executor.answers import AnswerPiece
from compound.executor.host import ExecutorHost
from compound.executor.process import ProcessExecutor
from compound.executor.service import Executor
from compound.llm import build_client
from compound.llm.base import Completion, LLMClient, Message, StreamEvent, ToolChoice, ToolSpec
from compound.store.base import RunStore
from compound.store.values import Event

PROMPT = "Look into the history of tea and the costs of tea and the risks of tea"
HOSTS = ["loop", "process"]


class Threads:
    """An LLMClient around another that notes the thread of each call and of aclose,
    and can hold its calls until they are canceled."""

    def __init__(self, inner: LLMClient, *, hold: bool = False) -> None:
        self.inner = inner
        self.hold = hold
        self.threads: set[int] = set()
        self.started = threading.Event()
        self.canceled = threading.Event()
        self.closed_on: int | None = None

    async def _held(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.canceled.set()
            raise

    async def warm(self) -> None:
        await self.inner.warm()

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None = None, timeout_s: float | None = None,
                       tools: Sequence[ToolSpec] | None = None,
                       tool_choice: ToolChoice = "auto") -> Completion:
        self.threads.add(threading.get_ident())
        if self.hold:
            await self._held()
        return await self.inner.complete(model=model, messages=messages, max_tokens=max_tokens,
                                         json_schema=json_schema, timeout_s=timeout_s,
                                         tools=tools, tool_choice=tool_choice)

    async def stream(self, *, model: str, messages: list[Message], max_tokens: int,
                     json_schema: dict[str, Any] | None = None,
                     timeout_s: float | None = None,
                     tools: Sequence[ToolSpec] | None = None,
                     tool_choice: ToolChoice = "auto") -> AsyncIterator[StreamEvent]:
        self.threads.add(threading.get_ident())
        async for event in self.inner.stream(model=model, messages=messages, max_tokens=max_tokens,
                                             json_schema=json_schema, timeout_s=timeout_s,
                                             tools=tools, tool_choice=tool_choice):
            yield event

    async def aclose(self) -> None:
        self.closed_on = threading.get_ident()
        await self.inner.aclose()


async def events_until_end(store: RunStore, task_id: str, host: ExecutorHost) -> list[Event]:
    """Dispatch the task and collect its events here until its end (tests/test_process.py too)."""
    seen: list[Event] = []
    async with store.subscribe(task_id, after=0) as sub:
        await host.dispatch(task_id, priority=2)
        async with asyncio.timeout(60):
            async for ev in sub:
                seen.append(ev)
                if ev.terminal:
                    return seen
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.asynccontextmanager
async def hosted(kind: str, store: RunStore, settings: Settings, client: LLMClient | None = None,
                 **kw: Any) -> AsyncIterator[ExecutorHost]:
    host: ExecutorHost
    if kind == "loop":
        host = Executor(settings=settings, store=store, client=client or build_client(settings),
                        owns_client=True, **kw)
    else:
        host = ProcessExecutor(settings=settings.model_copy(update={"database_url": store.url}), store=store, **kw)
    assert isinstance(host, ExecutorHost)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@pytest.mark.parametrize("kind", HOSTS)
async def test_a_task_runs_and_its_events_reach_this_loop_once_in_order(
        kind: str, any_store: RunStore, sim_settings: Settings) -> None:
    async with hosted(kind, any_store, sim_settings) as host:
        task = await any_store.create_task(prompt=PROMPT, budget_usd=1.0)
        seen = await events_until_end(any_store, task.id, host)
        assert seen[-1].data["status"] == "completed", seen[-1].data
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
        assert sum(1 for e in seen if e.terminal) == 1
        assert {e.data["status"] for e in seen if e.kind == "subtask"} >= {"running", "completed"}
        assert await host.wait(task.id, timeout=60) == "completed"
        snap = await any_store.snapshot(task.id)
        assert snap["status"] == "completed" and snap["total_cost_usd"] > 0


@pytest.mark.parametrize("kind", HOSTS)
async def test_the_streamed_answer_reaches_a_listener_here(kind: str, store: RunStore, sim_settings: Settings) -> None:
    async with hosted(kind, store, sim_settings, stream_answers=True) as host:
        task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
        pieces: list[AnswerPiece] = []
        with host.answers.listen(task.id, pieces.append):
            await host.dispatch(task.id, priority=2)
            assert await host.wait(task.id, timeout=60) == "completed"
        snap = await store.snapshot(task.id)
        assert len(pieces) > 1
        assert "".join(p.text for p in pieces) == snap["result"]


async def test_cancel_approve_and_their_errors_on_the_loop(store: RunStore, sim_settings: Settings) -> None:
    client = Threads(build_client(sim_settings), hold=True)
    async with hosted("loop", store, sim_settings, client=client) as host:
        task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
        await host.dispatch(task.id, priority=2)
        assert await asyncio.to_thread(client.started.wait, 30)  # the planner's call is held
        await host.cancel(task.id)
        assert client.canceled.is_set()
        assert (await store.head(task.id)).status == "canceled"
        with pytest.raises(Conflict, match="already canceled"):
            await host.cancel(task.id)
        with pytest.raises(NotFound):
            await host.approve("t_nobody")
    assert client.closed_on == threading.get_ident()  # the host's client, closed at its stop


async def test_a_stop_leaves_running_tasks_for_the_next_start(store: RunStore, sim_settings: Settings) -> None:
    held = Threads(build_client(sim_settings), hold=True)
    first = Executor(settings=sim_settings, store=store, client=held)
    await first.start()
    task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
    await first.dispatch(task.id, priority=2)
    assert await asyncio.to_thread(held.started.wait, 30)
    await first.stop()
    assert held.canceled.is_set()
    assert (await store.head(task.id)).status not in ("canceled", "failed", "completed")
    second = Executor(settings=sim_settings, store=store, client=build_client(sim_settings), owns_client=True)
    try:
        assert await second.start() == [task.id]  # resumed
        assert await second.wait(task.id, timeout=60) == "completed"
    finally:
        await second.stop()
