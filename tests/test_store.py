"""The RunStore contract, run against both implementations: SQLite always, and
PostgreSQL where a server answers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlmodel import Session, select

from compound.core.errors import NotFound
from compound.store import Store, open_store
from compound.store.base import RunStore
from compound.store.db import make_engine
from compound.store.models import LedgerEntry, Task, TaskEvent, TaskStatus, User
from compound.store.values import BudgetRefusal, DailyRefusal, Event, Reservation, ReserveRequest, Settlement, SubState


def subs(*deps: list[int]) -> list[SubState]:
    return [SubState(index=i, description=f"step {i}", tier_hint=1, tier_assigned=1, models=["m"],
                     depends_on=list(d), status="pending", model="m") for i, d in enumerate(deps)]


def req(task_id: str, sub: int | None, amount: float, **kw: object) -> ReserveRequest:
    args: dict[str, object] = {"user_id": None, "kind": "subtask" if sub is not None else "synthesis",
                               "tier": 1, "model": "m", "attempt": 1, "daily_budget": None}
    args.update(kw)
    return ReserveRequest(task_id=task_id, subtask=sub, amount=amount, **args)  # type: ignore[arg-type]


async def planned(store: RunStore, budget: float = 1.0, n: int = 2, **kw: object) -> str:
    task = await store.create_task(prompt="p", budget_usd=budget, **kw)  # type: ignore[arg-type]
    await store.save_plan(task.id, reasoning="r", subtasks=subs(*([[]] * n)), prompt_versions={"x": "1"},
                          status=TaskStatus.planned)
    return task.id


async def test_tables_exist(any_store: RunStore) -> None:
    names = set(inspect(any_store.engine).get_table_names())
    assert {"user", "api_token", "task", "subtask", "ledger", "task_event"} <= names


async def test_create_and_read_task(any_store: RunStore) -> None:
    task = await any_store.create_task(prompt="do it", budget_usd=0.5, priority=1)
    again = await any_store.load(task.id)
    assert again is not None
    assert (again.prompt, again.status, again.priority, again.event_seq) == ("do it", "queued", 1, 1)
    snap = await any_store.snapshot(task.id)
    assert snap["created_at"].endswith("Z")
    events = await any_store.events_after(task.id, 0)
    assert [(e.seq, e.kind, e.data["status"]) for e in events] == [(1, "task", "queued")]


async def test_other_users_task_is_not_found(any_store: RunStore) -> None:
    with Session(any_store.engine, expire_on_commit=False) as s:
        alice, bob = User(name="alice"), User(name="bob")
        s.add_all([alice, bob])
        s.commit()
    task = await any_store.create_task(prompt="mine", budget_usd=1.0, user_id=alice.id)
    assert (await any_store.head(task.id, user_id=alice.id)).id == task.id
    with pytest.raises(NotFound):
        await any_store.head(task.id, user_id=bob.id)
    with pytest.raises(NotFound):
        await any_store.snapshot(task.id, user_id=bob.id)
    with pytest.raises(NotFound):
        await any_store.snapshot("t_missing")
    assert await any_store.load("t_missing") is None


async def test_events_are_numbered_per_task(any_store: RunStore) -> None:
    a = await any_store.create_task(prompt="a", budget_usd=1.0)
    b = await any_store.create_task(prompt="b", budget_usd=1.0)
    await any_store.set_status(a.id, TaskStatus.planning)
    await any_store.set_status(a.id, TaskStatus.failed, error="no")
    await any_store.set_status(b.id, TaskStatus.planning)
    assert [e.seq for e in await any_store.events_after(a.id, 0)] == [1, 2, 3]
    assert [e.seq for e in await any_store.events_after(b.id, 0)] == [1, 2]
    assert (await any_store.head(a.id)).event_seq == 3
    last = (await any_store.events_after(a.id, 2))[0]
    assert last.terminal and last.data == {"status": "failed", "error": "no", "total_cost_usd": 0.0}


async def test_snapshot_shape(any_store: RunStore) -> None:
    task = await any_store.create_task(prompt="p", budget_usd=1.0)
    await any_store.save_plan(task.id, reasoning="because", subtasks=subs([], [0]), prompt_versions={"a": "1"},
                              status=TaskStatus.planned)
    snap = await any_store.snapshot(task.id)
    assert snap["id"] == task.id and snap["status"] == "planned" and snap["reasoning"] == "because"
    assert snap["planned_at"].endswith("Z") and snap["prompt_versions"] == {"a": "1"}
    assert [(s["index"], s["depends_on"], s["status"]) for s in snap["subtasks"]] == [
        (0, [], "pending"), (1, [0], "pending")]
    state = await any_store.load(task.id)
    assert state is not None and [s.depends_on for s in state.subtasks] == [[], [0]]


async def test_a_fan_out_is_reserved_all_or_none_then_one_by_one(any_store: RunStore) -> None:
    task_id = await planned(any_store, budget=1.0, n=3)
    got = await any_store.reserve([req(task_id, 0, 0.4), req(task_id, 1, 0.4), req(task_id, 2, 0.4)])
    # all three do not fit: one by one, the first two do
    assert [type(g) for g in got] == [Reservation, Reservation, BudgetRefusal]
    assert isinstance(got[2], BudgetRefusal) and got[2].left == pytest.approx(0.2)
    state = await any_store.load(task_id)
    assert state is not None
    assert [s.status for s in state.subtasks] == ["running", "running", "pending"]
    assert state.reserved_usd == pytest.approx(0.8)
    kinds = [(e.kind, e.data.get("index"), e.data["status"]) for e in await any_store.events_after(task_id, 2)]
    assert kinds == [("subtask", 0, "running"), ("subtask", 1, "running")]


async def test_settle_completes_and_returns_the_new_state(any_store: RunStore) -> None:
    task_id = await planned(any_store, n=1)
    (res,) = await any_store.reserve([req(task_id, 0, 0.5)])
    assert isinstance(res, Reservation)
    sub = await any_store.settle(task_id, res, 0, Settlement(status="ok", cost_usd=0.01, input_tokens=10,
                                                            output_tokens=5, complete_with="answer"))
    assert sub is not None and (sub.status, sub.result, sub.cost_usd, sub.input_tokens) == (
        "completed", "answer", 0.01, 10)
    state = await any_store.load(task_id)
    assert state is not None and state.total_cost_usd == pytest.approx(0.01) and state.reserved_usd == 0
    last = (await any_store.events_after(task_id, 0))[-1]
    assert last.data["result"] == "answer" and last.data["status"] == "completed"


async def test_a_users_daily_budget_refuses(any_store: RunStore) -> None:
    with Session(any_store.engine, expire_on_commit=False) as s:
        u = User(name="dana", daily_budget_usd=0.5)
        s.add(u)
        s.commit()
    assert await any_store.user_daily_budget(u.id, None) == 0.5
    task_id = await planned(any_store, n=2, user_id=u.id)
    got = await any_store.reserve([req(task_id, 0, 0.3, user_id=u.id, daily_budget=0.5),
                                   req(task_id, 1, 0.3, user_id=u.id, daily_budget=0.5)])
    assert isinstance(got[0], Reservation)
    assert isinstance(got[1], DailyRefusal) and got[1].spent == pytest.approx(0.3)


async def test_recover_books_open_calls_lost_and_cancel_closes_the_rest(any_store: RunStore) -> None:
    task_id = await planned(any_store, n=2)
    await any_store.reserve([req(task_id, 0, 0.25)])
    assert await any_store.recover(task_id) == 1
    state = await any_store.load(task_id)
    assert state is not None and state.total_cost_usd == pytest.approx(0.25)
    assert [s.status for s in state.subtasks] == ["pending", "pending"]
    await any_store.reserve([req(task_id, 1, 0.25)])
    assert await any_store.request_cancel(task_id) == "planned"
    await any_store.cancel_open(task_id)
    state = await any_store.load(task_id)
    assert state is not None and state.cancel_requested
    assert [s.status for s in state.subtasks] == ["canceled", "canceled"]
    assert state.total_cost_usd == pytest.approx(0.5) and state.reserved_usd == 0
    with Session(any_store.engine) as s:
        rows = s.exec(select(LedgerEntry).where(LedgerEntry.task_id == task_id)).all()
    assert sorted(r.status for r in rows) == ["canceled", "lost"]
    assert await any_store.request_cancel("t_missing") is None


async def test_subscribers_get_each_committed_event_once_in_order(any_store: RunStore) -> None:
    task = await any_store.create_task(prompt="p", budget_usd=1.0)
    async with any_store.subscribe(task.id, after=0) as sub:
        await any_store.set_status(task.id, TaskStatus.planning)
        await any_store.set_status(task.id, TaskStatus.failed, error="x")
        got: list[Event] = []
        async for ev in sub:
            got.append(ev)
            if ev.terminal:
                break
    assert [(e.seq, e.data["status"]) for e in got] == [(1, "queued"), (2, "planning"), (3, "failed")]
    assert not any_store.hub.watched(task.id)


async def test_a_subscription_with_nothing_new_reads_nothing(any_store: RunStore) -> None:
    task = await any_store.create_task(prompt="p", budget_usd=1.0)
    async with any_store.subscribe(task.id) as sub:
        reads = any_store.stats.reads
        waiter = asyncio.ensure_future(anext(sub))
        for _ in range(20):  # many turns of the loop with nothing happening
            await asyncio.sleep(0)
        assert not waiter.done() and any_store.stats.reads == reads
        await any_store.set_status(task.id, TaskStatus.planning)
        ev = await asyncio.wait_for(waiter, 10)
    assert ev.seq == 2 and any_store.stats.reads == reads


async def test_principal_for_token(any_store: Store) -> None:
    from compound.store.users import create_token, revoke_token

    row, token = create_token(any_store.engine, "erin", ["read"])
    p = await any_store.principal_for_token(token)
    assert p is not None and p.user_name == "erin" and p.scopes == frozenset({"read"})
    assert await any_store.principal_for_token(token + "x") is None
    revoke_token(any_store.engine, row.id)
    assert await any_store.principal_for_token(token) is None


async def test_task_counts(any_store: RunStore) -> None:
    a = await any_store.create_task(prompt="a", budget_usd=1.0)
    await any_store.create_task(prompt="b", budget_usd=1.0)
    await any_store.set_status(a.id, TaskStatus.failed, error="x")
    assert await any_store.task_counts() == {"queued": 1, "failed": 1}


@pytest.mark.postgres
async def test_events_cross_processes_by_listen_notify(pg_url: str) -> None:
    """A write through one store reaches a subscriber of another (two processes on
    one database), by NOTIFY, without polling."""
    async with open_store(pg_url) as writer, open_store(pg_url) as watcher:
        task = await writer.create_task(prompt="p", budget_usd=1.0)
        async with watcher.subscribe(task.id, after=1) as sub:
            await writer.set_status(task.id, TaskStatus.planning)
            ev = await asyncio.wait_for(anext(sub), 10)
        assert (ev.seq, ev.data["status"]) == (2, "planning")


async def test_writes_arriving_together_share_one_commit(store: RunStore) -> None:
    tasks = [await store.create_task(prompt=str(i), budget_usd=1.0) for i in range(3)]
    before = store.stats.commits
    await asyncio.gather(*(store.set_status(t.id, TaskStatus.planning) for t in tasks for _ in range(10)))
    assert store.stats.commits - before < 30  # group commit: fewer commits than writes
    assert [(await store.head(t.id)).event_seq for t in tasks] == [11, 11, 11]


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    eng.dispose()


async def test_task_ids_are_unique(store: RunStore) -> None:
    ids = {(await store.create_task(prompt=str(i), budget_usd=1.0)).id for i in range(50)}
    assert len(ids) == 50
    with Session(store.engine) as s:
        assert len(s.exec(select(Task)).all()) == 50
        assert len(s.exec(select(TaskEvent)).all()) == 50


async def test_a_listener_hears_every_tasks_events(any_store: RunStore) -> None:
    heard: list[tuple[str, int]] = []
    stop = any_store.hub.listen(lambda events: heard.extend((e.task_id, e.seq) for e in events))
    a = await any_store.create_task(prompt="a", budget_usd=1.0)
    b = await any_store.create_task(prompt="b", budget_usd=1.0)
    await any_store.set_status(a.id, TaskStatus.planning)
    stop()
    await any_store.set_status(b.id, TaskStatus.planning)
    assert heard == [(a.id, 1), (b.id, 1), (a.id, 2)]


@pytest.mark.postgres
async def test_a_listener_hears_another_processes_events(pg_url: str) -> None:
    async with open_store(pg_url) as writer, open_store(pg_url) as watcher:
        got: asyncio.Queue[Event] = asyncio.Queue()

        def hear(events: Sequence[Event]) -> None:
            for e in events:
                got.put_nowait(e)

        watcher.hub.listen(hear)
        task = await writer.create_task(prompt="p", budget_usd=1.0)
        ev = await asyncio.wait_for(got.get(), 10)
        assert (ev.task_id, ev.seq, ev.data["status"]) == (task.id, 1, "queued")


async def test_a_sqlite_store_that_cannot_be_written_says_so(tmp_path: Path) -> None:
    from compound.store.db import StoreUnavailable

    store = open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(StoreUnavailable, match="missing-dir"):
        await store.open()
