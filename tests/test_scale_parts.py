"""The parts of queue mode, in one process: settings checks, the NOTIFY listener, the
advisory-lock liveness and model slots on PostgreSQL, and the executor's worker hooks."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from compound.core.errors import ConfigError
from compound.core.settings import Settings, load_settings
from compound.store import pg_notify
from compound.store.base import RunStore
from compound.store.db import make_engine
from compound.store.pg_slots import PgModelSlots
from compound.worker import dbos_private, names, wake
from compound.worker.liveness import Liveness
from compound.worker.names import check_queue_settings
from tests.fixtures.fakes import FakeLLM
from tests.test_executor import executor, kind_answer, plan, worker_calls

PG = "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(("kw", "problem"), [
    ({"database_url": PG}, None),
    ({"database_url": PG, "dbos_system_database_url": PG + "_sys"}, None),
    ({"database_url": "sqlite:///c.db"}, "COMPOUND_DATABASE_URL"),
    ({"database_url": PG, "dbos_system_database_url": "sqlite:///d.db"}, "COMPOUND_DBOS_SYSTEM_DATABASE_URL"),
    ({"database_url": PG, "queue_concurrency": 4, "worker_concurrency": 8}, "COMPOUND_WORKER_CONCURRENCY"),
])
def test_queue_settings_checked(kw: dict[str, Any], problem: str | None) -> None:
    settings = Settings(execution="queue", **kw)
    if problem is None:
        check_queue_settings(settings)
    else:
        with pytest.raises(ConfigError, match=problem):
            check_queue_settings(settings)


def test_execution_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().execution == "inprocess"
    monkeypatch.setenv("COMPOUND_EXECUTION", "queue")
    s = load_settings()
    assert s.execution == "queue" and s.system_database_url() == s.database_url
    monkeypatch.setenv("COMPOUND_EXECUTION", "cluster")
    with pytest.raises(ConfigError, match="execution"):
        load_settings()


@pytest.mark.postgres
async def test_notify_reaches_a_listener(pg_url: str) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    listener = pg_notify.Listener(pg_url, {pg_notify.CANCEL: got.put_nowait})
    await listener.start()
    engine = make_engine(pg_url)
    try:
        payload = f"t_{uuid.uuid4().hex}"
        await asyncio.to_thread(pg_notify.publish, engine, pg_notify.CANCEL, payload)
        while (seen := await asyncio.wait_for(got.get(), timeout=30)) != payload:
            pass  # another test's signal on the same database
        assert seen == payload
    finally:
        await listener.stop()
        engine.dispose()


def _live_workers(url: str) -> list[str]:
    from sqlalchemy import text

    from compound.worker.liveness import LIVE_WORKERS_SQL

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text(LIVE_WORKERS_SQL))]
    finally:
        engine.dispose()


@pytest.mark.postgres
async def test_liveness_sees_a_dead_worker(pg_url: str) -> None:
    me, other = Liveness(pg_url), Liveness(pg_url)
    wid = f"worker-test-{uuid.uuid4().hex}"
    try:
        assert await other.claim(wid)
        live = await asyncio.to_thread(_live_workers, pg_url)
        assert wid in live  # pg_stat_activity names the lock's holder
        assert not await me.claim(wid)  # an id already held is refused
        assert not await me.is_dead(wid)
        assert await other.alive()
        await other.close()  # the process died: its session, and lock, are gone
        deadline = asyncio.get_running_loop().time() + 30
        while not await me.is_dead(wid):  # the server ends the session a moment after the socket closes
            assert asyncio.get_running_loop().time() < deadline, "the dead session's lock was never freed"
            await asyncio.sleep(0.05)
        assert await me.is_dead(wid)  # probing does not keep the lock
    finally:
        await me.close()
        await other.close()


@pytest.mark.postgres
async def test_model_slots_cap_holds_across_processes(pg_url: str) -> None:
    """Two PgModelSlots stand for two workers: together they never exceed the cap, and
    the cap is reached (the demand is higher)."""
    model = f"test/model-{uuid.uuid4().hex[:8]}"
    cap = 2
    workers = [PgModelSlots(pg_url, lambda m: cap if m == model else None) for _ in range(2)]
    assert workers[0].limit_for("other/model") is None
    now = peak = 0

    async def call(slots: PgModelSlots) -> None:
        nonlocal now, peak
        limit = slots.limit_for(model)
        assert limit is not None
        await limit.acquire()
        try:
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.05)
            now -= 1
        finally:
            limit.release()

    try:
        await asyncio.wait_for(asyncio.gather(*(call(workers[i % 2]) for i in range(12))), timeout=60)
        assert peak == cap
    finally:
        for w in workers:
            await w.close()


@pytest.mark.postgres
async def test_a_dead_workers_model_slot_frees_itself(pg_url: str) -> None:
    model = f"test/model-{uuid.uuid4().hex[:8]}"
    dead, live = (PgModelSlots(pg_url, lambda _m: 1) for _ in range(2))
    held = dead.limit_for(model)
    assert held is not None
    await held.acquire()
    waiting = asyncio.ensure_future(live.limit_for(model).acquire())  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the one slot is taken by the other worker
    conn, _ = held._held.pop()
    await conn.close()  # the holder dies without releasing
    assert await asyncio.wait_for(waiting, timeout=30)
    live.limit_for(model).release()  # type: ignore[union-attr]
    await live.close()
    await dead.close()


async def test_run_here_returns_when_the_task_is_canceled(store: RunStore) -> None:
    """The worker's entry point: cancel() (from a NOTIFY) ends it normally; the task is canceled."""
    fake = FakeLLM(answer=kind_answer, latency=lambda _m, msgs: 5.0 if "worker" in msgs[0]["content"] else 0)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", []), ("B", [0])))
    run = asyncio.ensure_future(ex.run_here(task.id))
    while not worker_calls(fake):
        await asyncio.sleep(0.01)
    assert ex.is_running(task.id)
    await ex.cancel(task.id)
    await asyncio.wait_for(run, timeout=10)  # returned, not raised
    assert (await store.snapshot(task.id))["status"] == "canceled"
    assert not ex.is_running(task.id)
    await ex.stop()


async def test_run_here_leaves_the_task_when_the_worker_stops(store: RunStore) -> None:
    """A stopping worker leaves its task unfinished (DBOS keeps the workflow PENDING for
    another worker): run_here raises CancelledError instead of returning."""
    fake = FakeLLM(answer=kind_answer, latency=lambda _m, msgs: 5.0 if "worker" in msgs[0]["content"] else 0)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", []),))
    run = asyncio.ensure_future(ex.run_here(task.id))
    while not worker_calls(fake):
        await asyncio.sleep(0.01)
    await ex.stop()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert (await store.snapshot(task.id))["status"] == "executing"


# Waking DBOS's queue thread (worker/wake.py). A wait is given 60 s; each case must end
# it far sooner, or the bell did not work.
LONG = 60.0


def wait_in_thread(bell: wake.Doorbell, stop: threading.Event) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        t = time.monotonic()
        out.append(bell.wait(stop, LONG))
        out.append(time.monotonic() - t)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


@pytest.mark.parametrize("how", ["ring", "stop", "close"])
def test_doorbell_ends_a_wait(how: str) -> None:
    """A ring ends the wait early without stopping; DBOS's stop event or close() end it
    as a stop (True: the queue thread returns)."""
    bell, stop = wake.Doorbell(), threading.Event()
    thread, out = wait_in_thread(bell, stop)
    {"ring": bell.ring, "stop": stop.set, "close": bell.close}[how]()
    thread.join(LONG / 2)
    assert not thread.is_alive()
    stopped, waited = out
    assert stopped is (how != "ring")
    assert waited < LONG / 2


def test_doorbell_keeps_a_ring_that_came_between_waits() -> None:
    """A ring while the queue thread is busy polling (not waiting) ends its next wait at
    once: an enqueue that committed after the poll looked is not left for the next poll."""
    bell, stop = wake.Doorbell(), threading.Event()
    bell.ring()
    t = time.monotonic()
    assert bell.wait(stop, LONG) is False
    assert time.monotonic() - t < LONG / 2
    assert bell.wait(stop, 0.01) is False  # one ring, one early end: this one times out


def test_doorbell_is_installed_in_this_dbos() -> None:
    """The hook on DBOS's queue thread fits the installed DBOS (a release that changes
    `queue_worker_thread` fails here rather than quietly slowing every task's start)."""
    bell = wake.Doorbell()
    stop = threading.Event()
    try:
        assert wake.install(names.QUEUE, bell)
        assert wake.install(names.QUEUE, bell)  # a second worker in one process: wrapped once
        assert not hasattr(dbos_private.queue_thread().__compound_original__, "__compound_original__")  # type: ignore[attr-defined]
        ours = wake.stop_event_for(stop, names.QUEUE)
        assert wake.stop_event_for(stop, "another queue") is stop
    finally:
        wake.uninstall(names.QUEUE)
    assert wake.stop_event_for(stop, names.QUEUE) is stop
    assert isinstance(ours, wake._Waiter)
    thread = threading.Thread(target=lambda: ours.wait(LONG))
    thread.start()
    bell.ring()  # the queue thread's wait ends on our bell
    thread.join(LONG / 2)
    assert not thread.is_alive() and not ours.is_set()
