"""The executor's writes. Each function is one short transaction that changes state
and appends its event together, so nothing is visible before it is durable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from compound.core.logging import get_logger
from compound.store.fastwrite import INSERT_EVENT, FastWriter
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
log = get_logger("compound.task")


def log_status(task_id: str, status: str, *, error: str | None = None, total: float | None = None,
               subtasks: int | None = None) -> None:
    """One structured log line per task state change (written after the change is durable)."""
    status = str(getattr(status, "value", status))
    fields: dict[str, Any] = {"task_id": task_id, "status": status}
    if total is not None:
        fields["cost_usd"] = round(float(total), 9)
    if subtasks is not None:
        fields["subtasks"] = subtasks
    if error:
        fields["error"] = error[:500]
    (log.warning if status in ("failed", "partial") else log.info)("task status", **fields)
# The statements a reservation runs (FastWriter dialect: :name params). The budget
# check and the reservation are one UPDATE: it changes no row when `r` does not fit.
RESERVE_ON_TASK = (
    "UPDATE task SET reserved_usd=reserved_usd+:r, event_seq=event_seq+:n, updated_at=:now "
    "WHERE id=:t AND total_cost_usd+reserved_usd+:r <= budget_usd+:eps RETURNING event_seq"
)
INSERT_RESERVED = (
    "INSERT INTO ledger (task_id, user_id, kind, subtask_index, tier, model, attempt, status, reserved_usd, "
    "cost_usd, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, created_at) VALUES (:t, :u, "
    ":kind, :si, :tier, :model, :att, 'reserved', :r, 0, 0, 0, 0, 0, :now) RETURNING id"
)
MARK_RUNNING = (
    "UPDATE subtask SET status='running', attempts=:att, model=:model, started_at=COALESCE(started_at, :now) "
    'WHERE task_id=:t AND "index"=:i'
)


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
    context: list[dict[str, str]] | None = None
    answer_max_tokens: int | None = None


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
        context=row["context"], answer_max_tokens=row["answer_max_tokens"],
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


def set_status(w: FastWriter, task_id: str, status: str, *, error: str | None = None,
               result: str | None = None) -> None:
    """A task's status (with error/result and timestamps) and its event, in one transaction."""
    now = w.now()
    sets = ["status=:st", "event_seq=event_seq+1", "updated_at=:now"]
    if error is not None:
        sets.append("error=:err")
    if result is not None:
        sets.append("result=:res")
    if status == TaskStatus.executing:
        sets.append("started_at=COALESCE(started_at, :now)")
    if status in TERMINAL:
        sets.append("completed_at=:now")
    with w.tx() as cur:
        seq, total = w.run(cur, f"UPDATE task SET {', '.join(sets)} WHERE id=:t RETURNING event_seq, total_cost_usd",
                           {"st": status, "now": now, "err": error, "res": result, "t": task_id}).fetchone()
        data: dict[str, Any] = {"status": status, "error": error, "total_cost_usd": total}
        if result is not None:
            data["result"] = result
        w.event(cur, task_id, seq, "task", data, now)
    log_status(task_id, status, error=error, total=total)


TERMINAL = frozenset({TaskStatus.completed, TaskStatus.partial, TaskStatus.failed, TaskStatus.canceled})


def save_plan(w: FastWriter, task_id: str, *, reasoning: str | None, subs: list[SubState],
              prompt_versions: dict[str, str], planned_status: str,
              warnings: list[str] | None = None) -> None:
    """Insert the subtasks and mark the task planned, in one transaction. The plan's
    JSON is cleared from the task row: the subtask rows are the plan, and a narrow row
    keeps hot UPDATEs small."""
    now = w.now()
    rows = [{"id": f"s_{task_id[2:]}_{s.index}", "t": task_id, "i": s.index, "d": s.description,
             "th": s.tier_hint, "ta": s.tier_assigned, "ms": w.dumps(s.models), "m": s.model,
             "deps": w.dumps(s.depends_on), "st": s.status} for s in subs]
    with w.tx() as cur:
        if rows:
            cur.executemany(w.sql(
                "INSERT INTO subtask (id, task_id, \"index\", description, tier_hint, tier_assigned, models, "
                "model, depends_on, status, attempts, cost_usd, input_tokens, output_tokens) VALUES "
                "(:id, :t, :i, :d, :th, :ta, {json:ms}, :m, {json:deps}, :st, 0, 0, 0, 0)"), rows)
        seq, total = w.run(cur, "UPDATE task SET reasoning=:r, plan_in=NULL, prompt_versions={json:pv}, "
                                "warnings={json:wn}, "
                                "status=:st, planned_at=:now, event_seq=event_seq+1, updated_at=:now "
                                "WHERE id=:t RETURNING event_seq, total_cost_usd",
                           {"r": reasoning, "pv": w.dumps(prompt_versions), "st": planned_status,
                            "wn": w.dumps(warnings or None), "now": now, "t": task_id}).fetchone()
        w.event(cur, task_id, seq, "task", {"status": planned_status, "error": None, "total_cost_usd": total},
                now)
    log_status(task_id, planned_status, total=total, subtasks=len(subs))


def set_planner_model(engine: Engine, task_id: str, model: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == task_id).values(planner_model=model))


def subtask_transition(w: FastWriter, task_id: str, sub: SubState, *, started: bool = False,
                       finished: bool = False) -> None:
    """Write a subtask's status/result/error (from the mirror) and its event."""
    now = w.now()
    with w.tx() as cur:
        w.run(cur, "UPDATE subtask SET status=:st, result=:res, error=:err, model=:model, "
                   "attempts=:att, started_at=COALESCE(started_at, :started), "
                   "completed_at=:completed WHERE task_id=:t AND \"index\"=:i",
              {"st": sub.status, "res": sub.result, "err": sub.error, "model": sub.model,
               "att": sub.attempts, "started": now if started else None,
               "completed": now if finished else None, "t": task_id, "i": sub.index})
        seq = w.run(cur, "UPDATE task SET event_seq=event_seq+1, updated_at=:now WHERE id=:t "
                         "RETURNING event_seq", {"now": now, "t": task_id}).fetchone()[0]
        w.event(cur, task_id, seq, "subtask", sub.event(with_result=finished), now)


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


@dataclass
class DailyRefusal:
    """The user's daily budget has no room for the call: `spent` today already."""

    spent: float


def reserve(w: FastWriter, task_id: str, **kw: Any) -> Reservation | DailyRefusal | None:
    """One reservation in its own transaction (see reserve_in)."""
    with w.tx() as cur:
        return reserve_in(w, cur, task_id, **kw)


def reserve_in(w: FastWriter, cur: Any, task_id: str, *, user_id: str | None, kind: str,
               subtask: SubState | None, tier: int | None, model: str, attempt: int, amount: float,
               daily_budget: float | None) -> Reservation | DailyRefusal | None:
    """Reserve `amount` against the task's budget (and the user's day), insert the
    ledger row, and (for a subtask) count the attempt and mark it running, inside the
    caller's transaction. None when the task's budget has no room; nothing is written
    unless the reservation is made."""
    now = w.now()
    if daily_budget is not None and user_id is not None:
        if not w.sqlite:  # serialize one user's reservations across processes (SQLite already does)
            w.run(cur, 'SELECT id FROM "user" WHERE id=:u FOR UPDATE', {"u": user_id})
        spent = float(w.run(cur, "SELECT COALESCE(SUM(CASE WHEN status='reserved' THEN reserved_usd "
                                 "ELSE cost_usd END), 0) FROM ledger WHERE user_id=:u AND created_at >= :day",
                            {"u": user_id, "day": _midnight(w)}).fetchone()[0])
        if spent + amount > daily_budget + EPS:
            return DailyRefusal(spent)
    ev = 1 if subtask is not None else 0
    row = w.run(cur, RESERVE_ON_TASK, {"r": amount, "n": ev, "now": now, "t": task_id, "eps": EPS}).fetchone()
    if row is None:
        return None
    ledger_id = w.run(cur, INSERT_RESERVED,
                      {"t": task_id, "u": user_id, "kind": kind,
                       "si": subtask.index if subtask else None, "tier": tier, "model": model,
                       "att": attempt, "r": amount, "now": now}).fetchone()[0]
    if subtask is not None:
        subtask.status = SubtaskStatus.running
        subtask.attempts = attempt
        subtask.model = model
        w.run(cur, MARK_RUNNING,
              {"att": attempt, "model": model, "now": now, "t": task_id, "i": subtask.index})
        w.event(cur, task_id, row[0], "subtask", subtask.event(), now)
    return Reservation(int(ledger_id), amount)


def reserve_many(w: FastWriter, cur: Any, task_id: str, calls: list[dict[str, Any]]) -> list[Reservation] | None:
    """Several subtask calls of one task that became ready together, reserved with one
    budget check (all or none: None when they do not all fit, and nothing is written).
    No daily budget may apply to them."""
    now = w.now()
    total = sum(c["amount"] for c in calls)
    row = w.run(cur, RESERVE_ON_TASK, {"r": total, "n": len(calls), "now": now, "t": task_id, "eps": EPS}).fetchone()
    if row is None:
        return None
    first_seq = int(row[0]) - len(calls) + 1
    out: list[Reservation] = []
    subs, events = [], []
    for k, c in enumerate(calls):
        sub: SubState = c["subtask"]
        ledger_id = w.run(cur, INSERT_RESERVED,
                          {"t": task_id, "u": c["user_id"], "kind": c["kind"], "si": sub.index, "tier": c["tier"],
                           "model": c["model"], "att": c["attempt"], "r": c["amount"], "now": now}).fetchone()[0]
        sub.status, sub.attempts, sub.model = SubtaskStatus.running, c["attempt"], c["model"]
        subs.append({"att": c["attempt"], "model": c["model"], "now": now, "t": task_id, "i": sub.index})
        events.append({"t": task_id, "seq": first_seq + k, "kind": "subtask", "data": w.dumps(sub.event()),
                       "now": now})
        out.append(Reservation(int(ledger_id), c["amount"]))
    cur.executemany(w.sql(MARK_RUNNING), subs)
    cur.executemany(w.sql(INSERT_EVENT), events)
    return out


def _midnight(w: FastWriter) -> Any:
    now = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y-%m-%d %H:%M:%S.%f") if w.sqlite else now


def settle(w: FastWriter, task_id: str, res: Reservation, *, status: str, cost: float,
           input_tokens: int = 0, output_tokens: int = 0, cache_read: int = 0, cache_write: int = 0,
           latency_ms: float | None = None, error: str | None = None,
           subtask: SubState | None = None, complete_with: str | None = None) -> None:
    """Settle a reservation to its real cost; with `complete_with`, also complete the
    subtask with that result in the same transaction."""
    now = w.now()
    done = subtask is not None and complete_with is not None
    with w.tx() as cur:
        w.run(cur, "UPDATE ledger SET status=:st, cost_usd=:c, input_tokens=:i, output_tokens=:o, "
                   "cache_read_tokens=:cr, cache_write_tokens=:cw, latency_ms=:lat, error=:err, "
                   "settled_at=:now WHERE id=:id",
              {"st": status, "c": cost, "i": input_tokens, "o": output_tokens, "cr": cache_read,
               "cw": cache_write, "lat": latency_ms, "err": error, "now": now, "id": res.ledger_id})
        seq = w.run(cur, "UPDATE task SET reserved_usd=reserved_usd-:r, total_cost_usd=total_cost_usd+:c, "
                         "event_seq=event_seq+:ev, updated_at=:now WHERE id=:t RETURNING event_seq",
                    {"r": res.amount, "c": cost, "ev": 1 if done else 0, "now": now,
                     "t": task_id}).fetchone()[0]
        if subtask is not None:
            subtask.cost_usd += cost
            subtask.input_tokens += input_tokens + cache_read + cache_write
            subtask.output_tokens += output_tokens
            if done:
                subtask.status = SubtaskStatus.completed
                subtask.result = complete_with
                subtask.error = None
            w.run(cur, "UPDATE subtask SET cost_usd=:c, input_tokens=:i, output_tokens=:o, status=:st, "
                       "result=:res, error=:err, completed_at=:done WHERE task_id=:t AND \"index\"=:idx",
                  {"c": subtask.cost_usd, "i": subtask.input_tokens, "o": subtask.output_tokens,
                   "st": subtask.status, "res": subtask.result, "err": subtask.error,
                   "done": now if done else None, "t": task_id, "idx": subtask.index})
            if done:
                w.event(cur, task_id, seq, "subtask", subtask.event(with_result=True), now)


def _close_open_rows(conn: Connection, task_id: str, status: str, why: str) -> int:
    """Settle every open reservation of the task at its worst case (the provider may
    have billed it) and move the money from reserved to spent. Returns rows closed."""
    rows = conn.execute(select(L.c.id, L.c.reserved_usd).where(
        L.c.task_id == task_id, L.c.status == CallStatus.reserved)).all()
    for ledger_id, amount in rows:
        conn.execute(update(L).where(L.c.id == ledger_id).values(
            status=status, cost_usd=amount, settled_at=utcnow(), error=why))
    spent = sum(float(r[1]) for r in rows)
    conn.execute(update(T).where(T.c.id == task_id).values(
        reserved_usd=0.0, total_cost_usd=T.c.total_cost_usd + spent))
    return len(rows)


def recover(engine: Engine, task_id: str) -> int:
    """After a crash: every open reservation becomes `lost` at its worst case, and
    running subtasks go back to pending. Returns rows lost."""
    with engine.begin() as conn:
        n = _close_open_rows(conn, task_id, CallStatus.lost,
                             "the process stopped while this call was in flight; counted at its worst case")
        conn.execute(update(S).where(S.c.task_id == task_id, S.c.status == SubtaskStatus.running)
                     .values(status=SubtaskStatus.pending))
    return n


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
        _close_open_rows(conn, task_id, CallStatus.canceled, "canceled while in flight; counted at its worst case")
        for s in subs:
            if s.status not in terminal:
                s.status = SubtaskStatus.canceled
                s.error = "canceled"
                conn.execute(update(S).where(S.c.task_id == task_id, S.c.index == s.index)
                             .values(status=s.status, error=s.error, completed_at=utcnow()))
                _event(conn, task_id, "subtask", s.event())
