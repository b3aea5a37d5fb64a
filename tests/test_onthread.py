"""`compound serve`'s executor runs on a thread and event loop of its own
(executor/onthread.py): its calls run there, its commits reach subscribers on the
caller's loop (SQLite's one writer serves both loops; PostgreSQL gets a second pool),
streamed answers reach listeners on their own loop, and cancel, approve and their
errors cross intact."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from compound.core.errors import Conflict, NotFound
from compound.core.settings import Settings
from compound.executor.answers import AnswerPiece
from compound.executor.onthread import ThreadedExecutor
from compound.llm import build_client
from compound.llm.base import Completion, LLMClient, Message, StreamEvent
from compound.store.base import Event, RunStore

PROMPT = "Look into the history of tea and the costs of tea and the risks of tea"


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

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None = None, timeout_s: float | None = None) -> Completion:
        self.threads.add(threading.get_ident())
        if self.hold:
            await self._held()
        return await self.inner.complete(model=model, messages=messages, max_tokens=max_tokens,
                                         json_schema=json_schema, timeout_s=timeout_s)

    async def stream(self, *, model: str, messages: list[Message], max_tokens: int,
                     json_schema: dict[str, Any] | None = None,
                     timeout_s: float | None = None) -> AsyncIterator[StreamEvent]:
        self.threads.add(threading.get_ident())
        async for event in self.inner.stream(model=model, messages=messages, max_tokens=max_tokens,
                                             json_schema=json_schema, timeout_s=timeout_s):
            yield event

    async def aclose(self) -> None:
        self.closed_on = threading.get_ident()
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()


async def events_until_end(store: RunStore, task_id: str, executor: ThreadedExecutor) -> list[Event]:
    """Dispatch the task and collect its events here until its end (test_process.py too)."""
    seen: list[Event] = []
    async with store.subscribe(task_id, after=0) as sub:
        await executor.dispatch(task_id, priority=2)
        async with asyncio.timeout(60):
            async for ev in sub:
                seen.append(ev)
                if ev.terminal:
                    return seen
    raise AssertionError("unreachable")  # pragma: no cover


async def test_a_task_runs_on_the_executors_thread_and_its_events_reach_this_loop(
        any_store: RunStore, sim_settings: Settings) -> None:
    client = Threads(build_client(sim_settings))
    executor = ThreadedExecutor(settings=sim_settings, store=any_store, client=client)
    await executor.start()
    try:
        task = await any_store.create_task(prompt=PROMPT, budget_usd=1.0)
        seen = await events_until_end(any_store, task.id, executor)
        assert seen[-1].data["status"] == "completed", seen[-1].data
        # every event once, in order: the executor's commits were published here, and on
        # PostgreSQL this process's listener did not publish them a second time
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
        assert {e.data["status"] for e in seen if e.kind == "subtask"} >= {"running", "completed"}
        assert client.threads == {executor.thread.ident} != {threading.get_ident()}
        assert await executor.wait(task.id, timeout=5) == "completed"
        snap = await any_store.snapshot(task.id)
        assert snap["status"] == "completed" and snap["total_cost_usd"] > 0
    finally:
        await executor.stop()
    assert not executor.thread.is_alive()
    assert client.closed_on == executor.thread.ident  # the SDK clients closed on their own loop


async def test_the_streamed_answer_reaches_a_listener_on_its_own_loop(
        store: RunStore, sim_settings: Settings) -> None:
    executor = ThreadedExecutor(settings=sim_settings, store=store, client=build_client(sim_settings),
                                stream_answers=True)
    await executor.start()
    try:
        task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
        pieces: list[AnswerPiece] = []
        threads: set[int] = set()

        def heard(piece: AnswerPiece) -> None:
            pieces.append(piece)
            threads.add(threading.get_ident())

        with executor.answers.listen(task.id, heard):
            await executor.dispatch(task.id, priority=2)
            assert await executor.wait(task.id, timeout=60) == "completed"
        snap = await store.snapshot(task.id)
        # several pieces, all heard on this loop's thread, before the task's end
        assert len(pieces) > 1 and threads == {threading.get_ident()}
        assert "".join(p.text for p in pieces) == snap["result"]
    finally:
        await executor.stop()


async def test_cancel_approve_and_their_errors_cross_between_the_loops(
        store: RunStore, sim_settings: Settings) -> None:
    client = Threads(build_client(sim_settings), hold=True)
    executor = ThreadedExecutor(settings=sim_settings, store=store, client=client)
    await executor.start()
    try:
        task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
        await executor.dispatch(task.id, priority=2)
        assert await asyncio.to_thread(client.started.wait, 30)  # the planner's call is held
        assert executor.is_running(task.id)
        await executor.cancel(task.id)
        assert client.canceled.is_set()  # the call was canceled on the executor's loop
        assert (await store.head(task.id)).status == "canceled"
        with pytest.raises(Conflict, match="already canceled"):
            await executor.cancel(task.id)
        with pytest.raises(NotFound):
            await executor.approve("t_nobody")
    finally:
        await executor.stop()


async def test_a_stop_leaves_running_tasks_for_the_next_start(store: RunStore, sim_settings: Settings) -> None:
    held = Threads(build_client(sim_settings), hold=True)
    first = ThreadedExecutor(settings=sim_settings, store=store, client=held)
    await first.start()
    task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
    await first.dispatch(task.id, priority=2)
    assert await asyncio.to_thread(held.started.wait, 30)
    await first.stop()
    assert held.canceled.is_set() and not first.thread.is_alive()
    assert (await store.head(task.id)).status not in ("canceled", "failed", "completed")
    second = ThreadedExecutor(settings=sim_settings, store=store, client=build_client(sim_settings))
    try:
        assert await second.start() == [task.id]  # resumed
        assert await second.wait(task.id, timeout=60) == "completed"
    finally:
        await second.stop()
    # the executor's loop let the store's writes go back to the writer thread
    later = await store.create_task(prompt=PROMPT, budget_usd=1.0)
    assert (await store.head(later.id)).status == "queued"
