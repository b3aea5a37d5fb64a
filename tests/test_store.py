"""Store basics on SQLite and, where a server answers, PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from compound.core.errors import NotFound
from compound.store.db import make_engine
from compound.store.events import append_event
from compound.store.models import Subtask, Task, TaskEvent, TaskStatus, User
from compound.store.tasks import create_task, get_subtasks, get_task, task_snapshot


def test_tables_exist(any_engine: Engine) -> None:
    names = set(inspect(any_engine).get_table_names())
    assert {"user", "api_token", "task", "subtask", "ledger", "task_event"} <= names


def test_create_and_read_task(any_engine: Engine) -> None:
    task = create_task(any_engine, prompt="do it", budget_usd=0.5, priority=1)
    again = get_task(any_engine, task.id)
    assert again.prompt == "do it"
    assert again.status == TaskStatus.queued
    assert again.priority == 1
    assert again.created_at.tzinfo is not None
    with Session(any_engine) as s:
        events = s.exec(select(TaskEvent).where(TaskEvent.task_id == task.id)).all()
    assert [(e.seq, e.kind, e.data["status"]) for e in events] == [(1, "task", "queued")]


def test_other_users_task_is_not_found(any_engine: Engine) -> None:
    with Session(any_engine, expire_on_commit=False) as s:
        alice, bob = User(name="alice"), User(name="bob")
        s.add_all([alice, bob])
        s.commit()
    task = create_task(any_engine, prompt="mine", budget_usd=1.0, user_id=alice.id)
    assert get_task(any_engine, task.id, user_id=alice.id).id == task.id
    with pytest.raises(NotFound):
        get_task(any_engine, task.id, user_id=bob.id)
    with pytest.raises(NotFound):
        task_snapshot(any_engine, "t_missing")


def test_events_are_numbered_per_task(any_engine: Engine) -> None:
    a = create_task(any_engine, prompt="a", budget_usd=1.0)
    b = create_task(any_engine, prompt="b", budget_usd=1.0)
    with Session(any_engine) as s:
        assert append_event(s, a.id, "task", {"status": "planning"}) == 2
        assert append_event(s, a.id, "task", {"status": "planned"}) == 3
        assert append_event(s, b.id, "task", {"status": "planning"}) == 2
        s.commit()
    assert get_task(any_engine, a.id).event_seq == 3


def test_snapshot_shape(any_engine: Engine) -> None:
    task = create_task(any_engine, prompt="p", budget_usd=1.0)
    with Session(any_engine) as s:
        s.add(Subtask(task_id=task.id, index=0, description="first", tier_hint=1, depends_on=[]))
        s.add(Subtask(task_id=task.id, index=1, description="second", tier_hint=2, depends_on=[0]))
        s.commit()
    snap = task_snapshot(any_engine, task.id)
    assert snap["id"] == task.id and snap["status"] == "queued"
    assert snap["created_at"].endswith("Z")
    assert [(s["index"], s["depends_on"], s["status"]) for s in snap["subtasks"]] == [
        (0, [], "pending"),
        (1, [0], "pending"),
    ]
    assert [s.index for s in get_subtasks(any_engine, task.id)] == [0, 1]


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    eng.dispose()


def test_task_ids_are_unique(engine: Engine) -> None:
    ids = {create_task(engine, prompt=str(i), budget_usd=1.0).id for i in range(50)}
    assert len(ids) == 50
    with Session(engine) as s:
        assert len(s.exec(select(Task)).all()) == 50
