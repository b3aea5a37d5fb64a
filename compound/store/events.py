"""The task event log (TaskEvent): one row per state change, written in the same
transaction as the change. SSE replays it; `seq` is the event id per task.

Event data shapes (the contract between the executor, SSE and the dashboard):
  kind "task":    {"status", "error", "total_cost_usd", "result"?: str}
  kind "subtask": {"index", "status", "model", "tier_assigned", "attempts",
                   "cost_usd", "input_tokens", "output_tokens", "error", "result"?: str}
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import Session

from compound.store.models import Task, TaskEvent, utcnow


def append_event(session: Session, task_id: str, kind: str, data: dict[str, Any]) -> int:
    """Add the next event of a task to the session (caller commits). Returns its seq."""
    t = Task.__table__  # type: ignore[attr-defined]
    row = session.execute(
        update(t).where(t.c.id == task_id).values(event_seq=t.c.event_seq + 1, updated_at=utcnow())
        .returning(t.c.event_seq)
    ).one()
    seq = int(row[0])
    session.add(TaskEvent(task_id=task_id, seq=seq, kind=kind, data=data))
    return seq


def events_after(engine: Any, task_id: str, seq: int, limit: int = 500) -> list[TaskEvent]:
    """The task's events with seq > `seq`, in order (SSE replay and tail)."""
    from sqlmodel import col, select

    with Session(engine) as session:
        return list(session.exec(
            select(TaskEvent).where(TaskEvent.task_id == task_id, col(TaskEvent.seq) > seq)
            .order_by(col(TaskEvent.seq)).limit(limit)))
