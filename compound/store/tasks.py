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
    priority: int = 2,
    plan_in: dict[str, Any] | None = None,
    approve: bool = True,
    context: list[dict[str, str]] | None = None,
    answer_max_tokens: int | None = None,
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
        context=context,
        answer_max_tokens=answer_max_tokens,
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
            raise NotFound(f"no task with id {task_id[:80]!r}")
        return task


def get_subtasks(engine: Engine, task_id: str) -> list[Subtask]:
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.exec(
                select(Subtask).where(Subtask.task_id == task_id).order_by(col(Subtask.index))
            )
        )


def iso(value: Any) -> str | None:
    """ISO 8601 in UTC with a Z, as the API speaks it."""
    if value is None:
        return None
    from datetime import UTC

    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).isoformat().replace("+00:00", "Z"))


def subtask_dict(s: Subtask) -> dict[str, Any]:
    return {
        "index": s.index,
        "description": s.description,
        "tier_hint": s.tier_hint,
        "tier_assigned": s.tier_assigned,
        "model": s.model,
        "depends_on": list(s.depends_on),
        "status": s.status,
        "result": s.result,
        "error": s.error,
        "attempts": s.attempts,
        "cost_usd": s.cost_usd,
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "started_at": iso(s.started_at),
        "completed_at": iso(s.completed_at),
    }


def task_snapshot(engine: Engine, task_id: str, *, user_id: str | None = None) -> dict[str, Any]:
    """The progress snapshot of design.md section 5 (GET /v1/tasks/{id})."""
    from sqlalchemy import func

    from compound.store.models import CallKind, LedgerEntry

    with Session(engine, expire_on_commit=False) as session:
        task = session.get(Task, task_id)
        if task is None or (user_id is not None and task.user_id != user_id):
            raise NotFound(f"no task with id {task_id[:80]!r}")
        subtasks = session.exec(
            select(Subtask).where(Subtask.task_id == task_id).order_by(col(Subtask.index))
        ).all()
        planner_row = session.exec(
            select(
                func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0),
                func.coalesce(func.sum(LedgerEntry.input_tokens), 0),
                func.coalesce(func.sum(LedgerEntry.output_tokens), 0),
                func.count(),
            ).where(LedgerEntry.task_id == task_id, LedgerEntry.kind == CallKind.planner)
        ).one()
    planner = None
    if task.planner_model or planner_row[3]:
        planner = {
            "model": task.planner_model,
            "cost_usd": float(planner_row[0]),
            "input_tokens": int(planner_row[1]),
            "output_tokens": int(planner_row[2]),
        }
    return {
        "id": task.id,
        "prompt": task.prompt,
        "status": task.status,
        "reasoning": task.reasoning,
        "result": task.result,
        "error": task.error,
        "budget_usd": task.budget_usd,
        "total_cost_usd": task.total_cost_usd,
        "priority": task.priority,
        "prompt_versions": task.prompt_versions,
        "warnings": list(task.warnings or []),
        "created_at": iso(task.created_at),
        "planned_at": iso(task.planned_at),
        "started_at": iso(task.started_at),
        "completed_at": iso(task.completed_at),
        "planner": planner,
        "subtasks": [subtask_dict(s) for s in subtasks],
    }
