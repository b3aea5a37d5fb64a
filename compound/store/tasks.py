"""Creating and reading tasks. The executor's writes live in store/runs.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from compound.core.errors import NotFound
from compound.store.events import append_event
from compound.store.models import Subtask, Task, TaskStatus


def create_task(
    engine: Engine,
    *,
    prompt: str,
    budget_usd: float,
    user_id: str | None = None,
    priority: int = 1,
    plan_in: dict[str, Any] | None = None,
    approve: bool = True,
) -> Task:
    """Insert a queued task (and its first event) and commit. The plan, if given, must
    already be validated."""
    task = Task(
        prompt=prompt,
        budget_usd=budget_usd,
        user_id=user_id,
        priority=priority,
        plan_in=plan_in,
        approve=approve,
        status=TaskStatus.queued,
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(task)
        session.flush()
        append_event(
            session, task.id, "task", {"status": task.status, "error": None, "total_cost_usd": 0.0}
        )
        session.commit()
        session.refresh(task)
    return task


def get_task(engine: Engine, task_id: str, *, user_id: str | None = None) -> Task:
    """The task, or NotFound. With user_id, another user's task is NotFound too."""
    with Session(engine, expire_on_commit=False) as session:
        task = session.get(Task, task_id)
        if task is None or (user_id is not None and task.user_id != user_id):
            raise NotFound(f"no task with id {task_id!r}")
        return task


def get_subtasks(engine: Engine, task_id: str) -> list[Subtask]:
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.exec(
                select(Subtask).where(Subtask.task_id == task_id).order_by(col(Subtask.index))
            )
        )
