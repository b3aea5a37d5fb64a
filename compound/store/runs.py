"""The executor's writes. Each function is one short transaction that changes state
and appends its event together, so nothing is visible before it is durable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from compound.store.models import (
    TERMINAL_SUBTASK,
    CallStatus,
    LedgerEntry,
    Subtask,
    SubtaskStatus,
    Task,
    TaskEvent,
    TaskStatus,
    User,
    utcnow,
)

T = Task.__table__  # type: ignore[attr-defined]
S = Subtask.__table__  # type: ignore[attr-defined]
L = LedgerEntry.__table__  # type: ignore[attr-defined]
E = TaskEvent.__table__  # type: ignore[attr-defined]
U = User.__table__  # type: ignore[attr-defined]
EPS = 1e-12


def _event(conn: Connection, task_id: str, kind: str, data: dict[str, Any]) -> int:
    seq = conn.execute(
        update(T)
        .where(T.c.id == task_id)
        .values(event_seq=T.c.event_seq + 1, updated_at=utcnow())
        .returning(T.c.event_seq)
    ).scalar_one()
    conn.execute(insert(E).values(task_id=task_id, seq=seq, kind=kind, data=data, created_at=utcnow()))
    return int(seq)


@dataclass
class SubState:
    """The executor's in-memory mirror of a subtask row (for events without SELECTs)."""

    index: int
    description: str
    tier_hint: int
    tier_assigned: int
    models: list[str]
    depends_on: list[int]
    status: str
    model: str | None = None
    result: str | None = None
    error: str | None = None
    attempts: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    def event(self, *, with_result: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index, "status": self.status, "model": self.model,
            "tier_assigned": self.tier_assigned, "attempts": self.attempts,
            "cost_usd": self.cost_usd, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "error": self.error,
        }
        if with_result and self.result is not None:
            data["result"] = self.result
        return data


@dataclass
class TaskState:
    id: str
    user_id: str | None
    prompt: str
    status: str
    priority: int
    approve: bool
    budget_usd: float
    plan_in: dict[str, Any] | None
    reasoning: str | None
    total_cost_usd: float
    reserved_usd: float
    cancel_requested: bool
    subtasks: list[SubState]


def load(engine: Engine, task_id: str) -> TaskState | None:
    with engine.connect() as conn:
        row = conn.execute(select(T).where(T.c.id == task_id)).mappings().first()
        if row is None:
            return None
        subs = conn.execute(select(S).where(S.c.task_id == task_id).order_by(S.c.index)).mappings().all()
    return TaskState(
        id=row["id"], user_id=row["user_id"], prompt=row["prompt"], status=row["status"],
        priority=row["priority"], approve=bool(row["approve"]), budget_usd=row["budget_usd"],
        plan_in=row["plan_in"], reasoning=row["reasoning"], total_cost_usd=row["total_cost_usd"],
        reserved_usd=row["reserved_usd"], cancel_requested=bool(row["cancel_requested"]),
        subtasks=[
            SubState(
                index=s["index"], description=s["description"], tier_hint=s["tier_hint"],
                tier_assigned=s["tier_assigned"] or s["tier_hint"], models=list(s["models"] or []),
                depends_on=list(s["depends_on"] or []), status=s["status"], model=s["model"],
                result=s["result"], error=s["error"], attempts=s["attempts"], cost_usd=s["cost_usd"],
                input_tokens=s["input_tokens"], output_tokens=s["output_tokens"],
            )
            for s in subs
        ],
    )


def unfinished_task_ids(engine: Engine) -> list[str]:
    terminal = [s.value for s in (TaskStatus.completed, TaskStatus.partial, TaskStatus.failed, TaskStatus.canceled)]
    with engine.connect() as conn:
        rows = conn.execute(
            select(T.c.id).where(T.c.status.not_in(terminal)).order_by(T.c.priority, T.c.created_at)
        ).all()
    return [r[0] for r in rows]


def set_status(engine: Engine, task_id: str, status: str, *, error: str | None = None,
               result: str | None = None, **values: Any) -> None:
    now = utcnow()
    fields: dict[str, Any] = {"status": status, **values}
    if error is not None:
        fields["error"] = error
    if result is not None:
        fields["result"] = result
    if status == TaskStatus.executing and "started_at" not in fields:
        fields["started_at"] = now
    if status in (TaskStatus.completed, TaskStatus.partial, TaskStatus.failed, TaskStatus.canceled):
        fields["completed_at"] = now
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == task_id).values(**fields))
        total = conn.execute(select(T.c.total_cost_usd).where(T.c.id == task_id)).scalar_one()
        data: dict[str, Any] = {"status": status, "error": error, "total_cost_usd": total}
        if result is not None:
            data["result"] = result
        _event(conn, task_id, "task", data)


def save_plan(engine: Engine, task_id: str, *, reasoning: str | None, plan_in: dict[str, Any],
              subs: list[SubState], prompt_versions: dict[str, str], planned_status: str) -> None:
    with engine.begin() as conn:
        if subs:
            conn.execute(insert(S), [
                {"id": f"s_{task_id[2:]}_{s.index}", "task_id": task_id, "index": s.index,
                 "description": s.description, "tier_hint": s.tier_hint,
                 "tier_assigned": s.tier_assigned, "models": s.models, "model": s.model,
                 "depends_on": s.depends_on, "status": s.status, "attempts": 0,
                 "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}
                for s in subs
            ])
        conn.execute(update(T).where(T.c.id == task_id).values(
            reasoning=reasoning, plan_in=plan_in, prompt_versions=prompt_versions,
            status=planned_status, planned_at=utcnow()))
        total = conn.execute(select(T.c.total_cost_usd).where(T.c.id == task_id)).scalar_one()
        _event(conn, task_id, "task", {"status": planned_status, "error": None, "total_cost_usd": total})


def set_planner_model(engine: Engine, task_id: str, model: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == task_id).values(planner_model=model))


def subtask_transition(engine: Engine, task_id: str, sub: SubState, *, started: bool = False,
                       finished: bool = False) -> None:
    """Write a subtask's status/result/error (from the mirror) and its event."""
    values: dict[str, Any] = {"status": sub.status, "result": sub.result, "error": sub.error,
                              "model": sub.model, "attempts": sub.attempts}
    now = utcnow()
    if started:
        values["started_at"] = now
    if finished:
        values["completed_at"] = now
    with engine.begin() as conn:
        conn.execute(update(S).where(S.c.task_id == task_id, S.c.index == sub.index).values(**values))
        _event(conn, task_id, "subtask", sub.event(with_result=finished))


def spent_today(conn: Connection, user_id: str) -> float:
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    row = conn.execute(
        select(func.coalesce(func.sum(L.c.cost_usd), 0.0),
               func.coalesce(func.sum(L.c.reserved_usd).filter(L.c.status == CallStatus.reserved), 0.0))
        .where(L.c.user_id == user_id, L.c.created_at >= midnight)
    ).one()
    return float(row[0]) + float(row[1])


def user_daily_budget(engine: Engine, user_id: str | None, default: float | None) -> float | None:
    if user_id is None:
        return default
    with engine.connect() as conn:
        own = conn.execute(select(U.c.daily_budget_usd).where(U.c.id == user_id)).scalar_one_or_none()
    return own if own is not None else default


@dataclass
class Reservation:
    ledger_id: int
    amount: float


def reserve(engine: Engine, task_id: str, *, user_id: str | None, kind: str, subtask: SubState | None,
            tier: int | None, model: str, attempt: int, amount: float,
            daily_budget: float | None) -> Reservation | None:
    """Reserve `amount` against the task's budget (and the user's day), insert the
    ledger row, and (for a subtask) count the attempt and mark it running. None when
    it does not fit."""
    with engine.begin() as conn:
        ok = conn.execute(
            update(T).where(T.c.id == task_id,
                            T.c.total_cost_usd + T.c.reserved_usd + amount <= T.c.budget_usd + EPS)
            .values(reserved_usd=T.c.reserved_usd + amount)
        ).rowcount
        if not ok:
            return None
        if daily_budget is not None and user_id is not None:
            if spent_today(conn, user_id) + amount > daily_budget + EPS:
                conn.rollback()
                return None
        ledger_id = conn.execute(insert(L).values(
            task_id=task_id, user_id=user_id, kind=kind,
            subtask_index=subtask.index if subtask else None, tier=tier, model=model,
            attempt=attempt, status=CallStatus.reserved, reserved_usd=amount, cost_usd=0.0,
            input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0,
            created_at=utcnow(),
        ).returning(L.c.id)).scalar_one()
        if subtask is not None:
            first = subtask.status != SubtaskStatus.running
            subtask.status = SubtaskStatus.running
            subtask.attempts = attempt
            subtask.model = model
            values: dict[str, Any] = {"status": subtask.status, "attempts": attempt, "model": model}
            if first:
                values["started_at"] = utcnow()
            conn.execute(update(S).where(S.c.task_id == task_id, S.c.index == subtask.index).values(**values))
            _event(conn, task_id, "subtask", subtask.event())
    return Reservation(int(ledger_id), amount)


def settle(engine: Engine, task_id: str, res: Reservation, *, status: str, cost: float,
           input_tokens: int = 0, output_tokens: int = 0, cache_read: int = 0, cache_write: int = 0,
           latency_ms: float | None = None, error: str | None = None,
           subtask: SubState | None = None, complete_with: str | None = None) -> None:
    """Settle a reservation to its real cost; with `complete_with`, also complete the
    subtask with that result in the same transaction."""
    with engine.begin() as conn:
        conn.execute(update(L).where(L.c.id == res.ledger_id).values(
            status=status, cost_usd=cost, input_tokens=input_tokens, output_tokens=output_tokens,
            cache_read_tokens=cache_read, cache_write_tokens=cache_write, latency_ms=latency_ms,
            error=error, settled_at=utcnow()))
        conn.execute(update(T).where(T.c.id == task_id).values(
            reserved_usd=T.c.reserved_usd - res.amount, total_cost_usd=T.c.total_cost_usd + cost))
        if subtask is not None:
            subtask.cost_usd += cost
            subtask.input_tokens += input_tokens + cache_read + cache_write
            subtask.output_tokens += output_tokens
            values: dict[str, Any] = {"cost_usd": subtask.cost_usd, "input_tokens": subtask.input_tokens,
                                      "output_tokens": subtask.output_tokens}
            if complete_with is not None:
                subtask.status = SubtaskStatus.completed
                subtask.result = complete_with
                subtask.error = None
                values.update(status=subtask.status, result=complete_with, error=None,
                              completed_at=utcnow())
            conn.execute(update(S).where(S.c.task_id == task_id, S.c.index == subtask.index).values(**values))
            if complete_with is not None:
                _event(conn, task_id, "subtask", subtask.event(with_result=True))


def recover(engine: Engine, task_id: str) -> int:
    """After a crash: every open reservation becomes `lost` at its worst case (it may
    have been billed), and running subtasks go back to pending. Returns rows lost."""
    with engine.begin() as conn:
        rows = conn.execute(select(L.c.id, L.c.reserved_usd).where(
            L.c.task_id == task_id, L.c.status == CallStatus.reserved)).all()
        for ledger_id, amount in rows:
            conn.execute(update(L).where(L.c.id == ledger_id).values(
                status=CallStatus.lost, cost_usd=amount, settled_at=utcnow(),
                error="the process stopped while this call was in flight; counted at its worst case"))
        lost = sum(float(r[1]) for r in rows)
        conn.execute(update(T).where(T.c.id == task_id).values(
            reserved_usd=0.0, total_cost_usd=T.c.total_cost_usd + lost))
        conn.execute(update(S).where(S.c.task_id == task_id, S.c.status == SubtaskStatus.running)
                     .values(status=SubtaskStatus.pending))
    return len(rows)


def request_cancel(engine: Engine, task_id: str) -> str | None:
    """Flag a task for cancel; returns its status (None if it does not exist)."""
    with engine.begin() as conn:
        status = conn.execute(select(T.c.status).where(T.c.id == task_id)).scalar_one_or_none()
        if status is not None:
            conn.execute(update(T).where(T.c.id == task_id).values(cancel_requested=True))
    return status


def set_approved(engine: Engine, task_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == task_id).values(approve=True))


def cancel_open(engine: Engine, task_id: str, subs: list[SubState]) -> None:
    """Cancel every non-terminal subtask (with events); open ledger rows count at their
    reservation (we cannot know whether the provider billed a call we abandoned)."""
    terminal = {s.value for s in TERMINAL_SUBTASK}
    with engine.begin() as conn:
        rows = conn.execute(select(L.c.id, L.c.reserved_usd).where(
            L.c.task_id == task_id, L.c.status == CallStatus.reserved)).all()
        for ledger_id, amount in rows:
            conn.execute(update(L).where(L.c.id == ledger_id).values(
                status=CallStatus.canceled, cost_usd=amount, settled_at=utcnow(),
                error="canceled while in flight; counted at its worst case"))
        lost = sum(float(r[1]) for r in rows)
        conn.execute(update(T).where(T.c.id == task_id).values(
            reserved_usd=0.0, total_cost_usd=T.c.total_cost_usd + lost))
        for s in subs:
            if s.status not in terminal:
                s.status = SubtaskStatus.canceled
                s.error = "canceled"
                conn.execute(update(S).where(S.c.task_id == task_id, S.c.index == s.index)
                             .values(status=s.status, error=s.error, completed_at=utcnow()))
                _event(conn, task_id, "subtask", s.event())


def older_than(days: int) -> datetime:
    return utcnow() - timedelta(days=days)
