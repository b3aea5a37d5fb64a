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
    row = session.execute(
        update(Task)
        .where(Task.id == task_id)  # type: ignore[arg-type]
        .values(event_seq=Task.event_seq + 1, updated_at=utcnow())
        .returning(Task.event_seq)
    ).one()
    seq = int(row[0])
    session.add(TaskEvent(task_id=task_id, seq=seq, kind=kind, data=data))
    return seq
