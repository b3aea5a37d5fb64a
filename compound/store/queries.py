"""Reads for listings: recent tasks, newest first, with an opaque cursor."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine

from compound.core.errors import UserInputError
from compound.store.models import Subtask, SubtaskStatus, Task
from compound.store.tasks import iso

T = Task.__table__  # type: ignore[attr-defined]
S = Subtask.__table__  # type: ignore[attr-defined]


def encode_cursor(created_at: datetime, task_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), task_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, task_id = json.loads(raw)
        return datetime.fromisoformat(at), str(task_id)
    except (ValueError, TypeError) as exc:
        raise UserInputError("cursor: not a cursor this server gave out; use next_cursor as returned") from exc


def list_tasks(engine: Engine, *, user_id: str | None, limit: int = 20, status: str | None = None,
               cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Task summaries, newest first; user_id None means every user's (admin)."""
    done = func.sum(func.cast(S.c.status == SubtaskStatus.completed, T.c.priority.type))
    counts = (select(S.c.task_id, func.count().label("n"), done.label("done"))
              .group_by(S.c.task_id).subquery())
    q = (select(T.c.id, T.c.prompt, T.c.status, T.c.total_cost_usd, T.c.budget_usd, T.c.created_at,
                T.c.completed_at, T.c.user_id, T.c.priority, counts.c.n, counts.c.done)
         .select_from(T.outerjoin(counts, counts.c.task_id == T.c.id)))
    if user_id is not None:
        q = q.where(T.c.user_id == user_id)
    if status is not None:
        q = q.where(T.c.status == status)
    if cursor:
        at, last_id = decode_cursor(cursor)
        q = q.where(or_(T.c.created_at < at, and_(T.c.created_at == at, T.c.id < last_id)))
    q = q.order_by(T.c.created_at.desc(), T.c.id.desc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    out = [
        {"id": r["id"], "prompt": r["prompt"], "status": r["status"], "priority": r["priority"],
         "subtasks_total": int(r["n"] or 0), "subtasks_done": int(r["done"] or 0),
         "total_cost_usd": r["total_cost_usd"], "budget_usd": r["budget_usd"],
         "created_at": iso(r["created_at"]), "completed_at": iso(r["completed_at"])}
        for r in rows
    ]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return out, next_cursor


def ledger_rows(engine: Engine, task_id: str) -> list[dict[str, Any]]:
    """A task's ledger, oldest first, as plain dicts (the evals price them again)."""
    from compound.store.models import LedgerEntry

    ledger = LedgerEntry.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(select(ledger).where(ledger.c.task_id == task_id).order_by(ledger.c.id))
        return [dict(r) for r in rows.mappings()]
