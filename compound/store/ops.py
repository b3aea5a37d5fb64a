"""A task's transitions, written once for every database (sans-I/O).

Each operation is a generator: it yields statements by name (("one" | "all" | "many" |
"exec", name, params)) and Events to publish, and is sent each statement's rows back.
A driver runs it inside one transaction: store/sqlite.py on its writer thread,
store/postgres.py on a pooled async connection. Each name's statement is written once
in store/statements.py and compiled for the driver's database (`Dialect.sql`).
The event sequence is advanced in one place: `_events`.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from compound.core.errors import Conflict, NotFound
from compound.core.money import money_shown, shown_usd
from compound.core.status import csv, end_reason, subtask_sources, task_sources
from compound.store.models import (
    TERMINAL_TASK,
    CallKind,
    CallStatus,
    SubtaskStatus,
    TaskStatus,
    ToolCallStatus,
)
from compound.store.values import (
    BudgetRefusal,
    DailyRefusal,
    Event,
    Principal,
    Reservation,
    ReserveOutcome,
    ReserveRequest,
    Settlement,
    SubState,
    TaskHead,
    TaskState,
    ToolCallRecord,
)

Stmt = tuple[Literal["one", "all", "many", "exec"], str, Any]
Op = Generator[Stmt | Event, Any, Any]
EPS = 1e-12  # float slack in budget checks

# Columns read back as a SubState / TaskState / snapshot, in this order.
SUB_COLS = ('"index", description, tier_hint, tier_assigned, models, depends_on, status, model, result, '
            "error, attempts, cost_usd, input_tokens, output_tokens, kind, tools, tool, arguments, partial_reason, "
            "optional_deps, reused_from, round, end_reason")
TOOL_COLS = ("id, subtask_index, turn, model_call_id, tool, arguments, status, result, error, started_at, "
             "completed_at, decision, decided_by, decided_at, decided_arguments, decision_message")
TOOL_RESULT_SHOWN_CHARS = 2000  # of a tool call's result, in the snapshot and its events
TASK_COLS = ("id, user_id, prompt, status, priority, approve, budget_usd, plan_in, reasoning, "
             "total_cost_usd, reserved_usd, cancel_requested, event_seq, context, answer_max_tokens, rerun_of, "
             "tier_models")
SNAP_TASK_COLS = ("id, user_id, prompt, status, reasoning, result, error, budget_usd, total_cost_usd, priority, "
                  "prompt_versions, created_at, planned_at, started_at, completed_at, planner_model, event_seq, "
                  "warnings, rerun_of, replans, end_reason")
SNAP_SUB_COLS = ('"index", description, tier_hint, tier_assigned, model, depends_on, status, result, error, '
                 "attempts, cost_usd, input_tokens, output_tokens, started_at, completed_at, kind, tools, "
                 "partial_reason, optional_deps, reused_from, round, end_reason")


class Dialect(Protocol):
    """What an operation needs to know of a database: its statements and how its
    driver takes and gives JSON and times."""

    @property
    def sql(self) -> Mapping[str, str]:
        """The statement of each name, for this database."""

    def now(self) -> Any:
        """The current time as this driver stores it (UTC)."""

    def json(self, value: Any) -> Any:
        """A parameter for a JSON column."""

    def loads(self, value: Any) -> Any:
        """A JSON column's value as read."""

    def dt(self, value: Any) -> datetime | None:
        """A timestamp column's value as read, as an aware UTC datetime."""

    def at(self, value: datetime) -> Any:
        """A datetime as a parameter compared against timestamp columns."""


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the API speaks it."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_dt(value: Any) -> datetime | None:
    if value is None:
        return None
    out = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return out if out.tzinfo is not None else out.replace(tzinfo=UTC)


def sub_state(d: Dialect, row: Sequence[Any]) -> SubState:
    return SubState(index=row[0], description=row[1], tier_hint=row[2], tier_assigned=row[3] or row[2],
                    models=list(d.loads(row[4]) or []), depends_on=list(d.loads(row[5]) or []), status=row[6],
                    model=row[7], result=row[8], error=row[9], attempts=row[10], cost_usd=row[11],
                    input_tokens=row[12], output_tokens=row[13], kind=row[14] or "llm",
                    tools=list(d.loads(row[15]) or []), tool=row[16], arguments=d.loads(row[17]),
                    partial_reason=row[18], optional=list(d.loads(row[19]) or []),
                    reused_from=row[20], round=row[21] or 0, end_reason=row[22])


def tool_record(d: Dialect, row: Sequence[Any]) -> ToolCallRecord:
    return ToolCallRecord(id=row[0], subtask=int(row[1]), turn=int(row[2]), model_call_id=row[3], tool=row[4],
                          arguments=dict(d.loads(row[5]) or {}), status=row[6], result=row[7], error=row[8],
                          started_at=d.dt(row[9]), completed_at=d.dt(row[10]), decision=row[11],
                          decided_by=row[12], decided_at=d.dt(row[13]), decided_arguments=d.loads(row[14]),
                          decision_message=row[15])


def tool_shown(c: ToolCallRecord) -> dict[str, Any]:
    """A tool call as the snapshot and its event show it (the result cut)."""
    result = c.result
    if result is not None and len(result) > TOOL_RESULT_SHOWN_CHARS:
        result = result[:TOOL_RESULT_SHOWN_CHARS] + f"… [{len(result) - TOOL_RESULT_SHOWN_CHARS} more characters]"
    approval = None if c.decision is None else {
        "decision": c.decision, "by": c.decided_by, "at": iso(c.decided_at), "arguments": c.decided_arguments,
        "message": c.decision_message}
    return {"id": c.id, "tool": c.tool, "arguments": c.arguments, "status": c.status, "result": result,
            "error": c.error, "started_at": iso(c.started_at), "completed_at": iso(c.completed_at),
            "approval": approval}


def row_event(row: Sequence[Any]) -> dict[str, Any]:
    """sub_event of a subtask's row (SUB_COLS) read straight from it: no JSON parsed,
    no SubState built, for the writes that only announce a transition."""
    data: dict[str, Any] = {
        "index": row[0], "status": row[6], "model": row[7], "tier_assigned": row[3] or row[2],
        "attempts": row[10], "cost_usd": shown_usd(row[11]), "input_tokens": row[12],
        "output_tokens": row[13], "error": row[9],
    }
    if row[18] is not None:
        data["partial_reason"] = row[18]
    return data


def sub_event(s: SubState, *, with_result: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "index": s.index, "status": s.status, "model": s.model, "tier_assigned": s.tier_assigned,
        "attempts": s.attempts, "cost_usd": shown_usd(s.cost_usd), "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens, "error": s.error,
    }
    if with_result and s.result is not None:
        data["result"] = s.result
    if s.partial_reason is not None:
        data["partial_reason"] = s.partial_reason
    return data


def _events(d: Dialect, task_id: str, items: Sequence[tuple[str, dict[str, Any]]], now: Any) -> Op:
    """Append events to the task's log: the one place event_seq advances. Task events
    get the task's total cost as committed. Returns the task's total cost."""
    seq, total = yield ("one", "NEXT_SEQ", {"t": task_id, "n": len(items), "now": now})
    first = int(seq) - len(items) + 1
    rows, events = [], []
    for k, (kind, data) in enumerate(items):
        if kind == "task":
            data = {**data, "total_cost_usd": shown_usd(total)}
        rows.append({"t": task_id, "seq": first + k, "kind": kind, "data": d.json(data), "now": now})
        events.append(Event(task_id, first + k, kind, data))
    yield ("many", "INSERT_EVENT", rows)
    yield from events
    return float(total)


# writes ---------------------------------------------------------------------------------


def create_task(d: Dialect, task_id: str, *, prompt: str, budget_usd: float, user_id: str | None,
                priority: int, plan_in: dict[str, Any] | None, approve: bool,
                context: list[dict[str, str]] | None = None, answer_max_tokens: int | None = None,
                rerun_of: str | None = None, tier_models: dict[str, list[str]] | None = None) -> Op:
    now = d.now()
    yield ("exec", "INSERT_TASK", {"id": task_id, "u": user_id, "p": prompt, "st": TaskStatus.queued.value,
                                   "pr": priority, "ap": approve, "b": budget_usd,
                                   "plan": None if plan_in is None else d.json(plan_in),
                                   "ctx": None if context is None else d.json(context), "amt": answer_max_tokens,
                                   "ro": rerun_of, "tm": None if tier_models is None else d.json(tier_models),
                                   "now": now})
    yield from _events(d, task_id, [("task", {"status": TaskStatus.queued.value, "error": None})], now)
    return TaskState(id=task_id, user_id=user_id, prompt=prompt, status=TaskStatus.queued, priority=priority,
                     approve=approve, budget_usd=budget_usd, plan_in=plan_in, reasoning=None, total_cost_usd=0.0,
                     reserved_usd=0.0, cancel_requested=False, event_seq=1, context=context,
                     answer_max_tokens=answer_max_tokens, rerun_of=rerun_of, tier_models=tier_models)


def set_status(d: Dialect, task_id: str, status: str, *, error: str | None, result: str | None,
               reason: str | None = None, only_from: Sequence[str] | None = None) -> Op:
    """The task's status, written only from a status core/status.py allows (and, given
    `only_from`, only from one of those), with why it ended when it ends; returns
    (applied, total cost). A terminal status never changes, so two processes can never
    both end a task and a task ends with one event. Ending a task as canceled also
    closes its open ledger rows and subtasks in the same transaction, so nothing stays
    reserved."""
    now = d.now()
    why = end_reason(status, reason)
    row = yield ("one", "SET_STATUS_IF", {
        "st": status, "err": error, "res": result, "why": why, "exec": status == TaskStatus.executing,
        "term": status in TERMINAL_TASK, "now": now, "t": task_id,
        "from": csv(task_sources(status, only_from=only_from))})
    if row is None:
        return False, None
    items: list[tuple[str, dict[str, Any]]] = []
    if status == TaskStatus.canceled:
        yield from _close_open_rows(d, task_id, CallStatus.canceled.value,
                                    "canceled while in flight, nothing known of its answer; counted at its worst case",
                                    now)
        calls = yield ("all", "TOOL_CALLS_UNKNOWN", {
            "t": task_id, "running": ToolCallStatus.running.value, "unknown": ToolCallStatus.unknown.value,
            "err": "canceled while in flight: it may or may not have happened", "now": now})
        calls = [*calls, *(yield from _deny_held(task_id, now))]
        items += [("tool_call", {"index": c.subtask, **tool_shown(c)}) for c in (tool_record(d, r) for r in calls)]
        items += (yield from _cancel_subtasks(d, task_id, now))
    data: dict[str, Any] = {"status": status, "error": error}
    if result is not None:
        data["result"] = result
    total = yield from _events(d, task_id, [*items, ("task", data)], now)
    return True, total


def _cancel_subtasks(d: Dialect, task_id: str, now: Any) -> Op:
    """Every subtask that may still be canceled is, with why; returns their events."""
    rows = yield ("all", "CANCEL_SUBTASKS", {"t": task_id, "st": SubtaskStatus.canceled.value, "err": "canceled",
                                             "why": end_reason(SubtaskStatus.canceled), "now": now,
                                             "from": csv(subtask_sources(SubtaskStatus.canceled))})
    return [("subtask", row_event(r)) for r in sorted(rows, key=lambda r: int(r[0]))]


def set_planner_model(d: Dialect, task_id: str, model: str) -> Op:
    yield ("exec", "SET_PLANNER_MODEL", {"m": model, "t": task_id})


def _sub_extra(d: Dialect, s: SubState, now: Any) -> dict[str, Any]:
    """A subtask row's columns beyond its description, tier and models."""
    return {"deps": d.json(s.depends_on), "st": s.status, "k": s.kind, "tl": d.json(s.tools), "tn": s.tool,
            "args": None if s.arguments is None else d.json(s.arguments),
            "od": d.json(s.optional) if s.optional else None, "rf": s.reused_from, "res": s.result,
            "ca": now if s.status == SubtaskStatus.completed else None, "rd": s.round,
            "why": end_reason(s.status, s.end_reason)}


def save_plan(d: Dialect, task_id: str, *, reasoning: str | None, subtasks: Sequence[SubState],
              prompt_versions: dict[str, str], status: str, warnings: Sequence[str] = ()) -> Op:
    """The subtask rows are the plan: the plan's JSON is cleared from the task row, and
    a narrow row keeps hot UPDATEs small."""
    now = d.now()
    saved = yield ("one", "SAVE_PLAN", {"r": reasoning, "pv": d.json(prompt_versions), "st": status, "now": now,
                                        "wn": d.json(list(warnings)) if warnings else None, "t": task_id,
                                        "from": csv(task_sources(status))})
    if saved is None:  # it ended meanwhile (canceled while it planned): nothing of the plan is kept
        return None
    rows = [{"id": f"s_{task_id[2:]}_{s.index}", "t": task_id, "i": s.index, "d": s.description,
             "th": s.tier_hint, "ta": s.tier_assigned, "ms": d.json(s.models), "m": s.model,
             **_sub_extra(d, s, now)} for s in subtasks]
    if rows:
        yield ("many", "INSERT_SUBTASK", rows)
    return (yield from _events(d, task_id, [("task", {"status": status, "error": None})], now))


def add_subtasks(d: Dialect, task_id: str, subtasks: Sequence[SubState], *, replan: dict[str, Any] | None) -> Op:
    """Subtasks joining a task that runs: entries of a plan still streaming, or a
    replanning round's additions (`replan`: {"round", "reason"}, appended to the task's
    `replans` and told in a task event)."""
    now = d.now()
    rows = [{"id": f"s_{task_id[2:]}_{s.index}", "t": task_id, "i": s.index, "d": s.description,
             "th": s.tier_hint, "ta": s.tier_assigned, "ms": d.json(s.models), "m": s.model,
             **_sub_extra(d, s, now)} for s in subtasks]
    if rows:
        yield ("many", "INSERT_SUBTASK", rows)
    if replan is None:
        return None
    row = yield ("one", "TASK_REPLANS", {"t": task_id})
    if row is None:
        raise NotFound(f"no task {task_id!r}")
    replans = [*(d.loads(row[1]) or []), replan]
    yield ("exec", "SET_REPLANS", {"rp": d.json(replans), "now": now, "t": task_id})
    return (yield from _events(d, task_id, [("task", {"status": row[0], "error": None, "replan": replan})], now))


def replace_pending(d: Dialect, task_id: str, sub: SubState) -> Op:
    """A subtask that has not started takes the whole plan's version of its entry."""
    row = yield ("one", "REPLACE_PENDING", {"d": sub.description, "th": sub.tier_hint, "ta": sub.tier_assigned,
                                            "ms": d.json(sub.models), "m": sub.model, "deps": d.json(sub.depends_on),
                                            "t": task_id, "i": sub.index})
    if row is None:
        raise NotFound(f"no pending subtask {sub.index} in task {task_id!r}")
    return sub_state(d, row)


def _unchanged(d: Dialect, task_id: str, index: int) -> Op:
    """A subtask whose status write was refused, as it is (NotFound when there is none)."""
    row = yield ("one", "SUBTASK", {"t": task_id, "i": index})
    if row is None:
        raise NotFound(f"no subtask {index} in task {task_id!r}")
    return sub_state(d, row)


def end_subtask(d: Dialect, task_id: str, index: int, *, status: str, error: str | None,
                reason: str | None = None) -> Op:
    """A subtask ends without a result, from a status core/status.py allows; when that
    is refused (it ended meanwhile) it is returned as it is and nothing is told."""
    now = d.now()
    row = yield ("one", "END_SUBTASK", {"st": status, "err": error, "why": end_reason(status, reason), "now": now,
                                        "t": task_id, "i": index, "from": csv(subtask_sources(status))})
    if row is None:
        return (yield from _unchanged(d, task_id, index))
    sub = sub_state(d, row)
    yield from _events(d, task_id, [("subtask", sub_event(sub))], now)
    return sub


def reserve(d: Dialect, requests: Sequence[ReserveRequest], *, lock_users: bool) -> Op:
    """See RunStore.reserve. `lock_users`: serialize one user's reservations across
    processes by locking the user's row (SQLite's single writer already does)."""
    now = d.now()
    out: list[ReserveOutcome | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for k, r in enumerate(requests):
        bulk = r.subtask is not None and (r.daily_budget is None or r.user_id is None)
        groups.setdefault(r.task_id if bulk else f"\0{k}", []).append(k)
    for key in sorted(groups):  # one lock order for every transaction
        members = groups[key]
        if len(members) > 1:
            got = yield from _reserve_many(d, [requests[k] for k in members], now)
            if got is not None:
                for k, res in zip(members, got, strict=True):
                    out[k] = res
                continue
        for k in members:  # one at a time: some may fit where all did not
            out[k] = yield from _reserve_one(d, requests[k], now, lock_users=lock_users)
    return out


def _reserve_one(d: Dialect, r: ReserveRequest, now: Any, *, lock_users: bool) -> Op:
    if r.daily_budget is not None and r.user_id is not None:
        if lock_users:
            yield ("one", "LOCK_USER", {"u": r.user_id})
        (spent,) = yield ("one", "DAILY_SPENT", {"u": r.user_id, "day": d.at(_midnight())})
        if float(spent) + r.amount > r.daily_budget + EPS:
            return DailyRefusal(float(spent))
    row = yield ("one", "RESERVE_ON_TASK", {"r": r.amount, "now": now, "t": r.task_id, "eps": EPS})
    if row is None:
        left = yield ("one", "BUDGET_LEFT", {"t": r.task_id})
        return BudgetRefusal(max(0.0, float(left[0])) if left else 0.0)
    return (yield from _book(d, [r], now))[0]


def _reserve_many(d: Dialect, rs: Sequence[ReserveRequest], now: Any) -> Op:
    total = sum(r.amount for r in rs)
    row = yield ("one", "RESERVE_ON_TASK", {"r": total, "now": now, "t": rs[0].task_id, "eps": EPS})
    if row is None:
        return None
    return (yield from _book(d, rs, now))


def _book(d: Dialect, rs: Sequence[ReserveRequest], now: Any) -> Op:
    """The ledger rows of reservations the task's budget took, and (for subtasks) the
    attempt counted and the subtask running, with its events."""
    out, events = [], []
    for r in rs:
        (ledger_id,) = yield ("one", "INSERT_RESERVED", {
            "t": r.task_id, "u": r.user_id, "kind": r.kind, "si": r.subtask, "tier": r.tier, "model": r.model,
            "att": r.attempt, "r": r.amount, "now": now})
        out.append(Reservation(int(ledger_id), r.amount))
        if r.subtask is not None:
            row = yield ("one", "MARK_RUNNING", {"att": r.attempt, "model": r.model, "now": now, "t": r.task_id,
                                                 "i": r.subtask, "from": csv(subtask_sources(SubtaskStatus.running))})
            if row is not None:  # else it ended meanwhile (canceled): the call is closed with the task
                events.append(("subtask", row_event(row)))
    if events:
        yield from _events(d, rs[0].task_id, events, now)
    return out


def _midnight() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def settle(d: Dialect, task_id: str, res: Reservation, subtask: int | None, o: Settlement) -> Op:
    now = d.now()
    done = subtask is not None and o.complete_with is not None
    settled = yield ("one", "SETTLE_LEDGER", {
        "st": o.status, "c": o.cost_usd, "i": o.input_tokens, "o": o.output_tokens, "cr": o.cache_read_tokens,
        "cw": o.cache_write_tokens, "lat": o.latency_ms, "err": o.error, "ans": o.answer, "now": now,
        "id": res.ledger_id, "open": CallStatus.reserved.value})
    if settled is None:  # closed already (the task was canceled or recovered meanwhile): booked once
        return None
    yield ("exec", "SETTLE_TASK", {"r": res.amount, "c": o.cost_usd, "now": now, "t": task_id})
    if subtask is None:
        return None
    row = yield ("one", "SETTLE_SUBTASK", {
        "c": o.cost_usd, "i": o.input_tokens + o.cache_read_tokens + o.cache_write_tokens, "o": o.output_tokens,
        "done": done, "res": o.complete_with, "now": now, "t": task_id, "idx": subtask,
        "why": end_reason(SubtaskStatus.completed), "from": csv(subtask_sources(SubtaskStatus.completed))})
    sub = sub_state(d, row)
    if done and sub.status == SubtaskStatus.completed:
        yield from _events(d, task_id, [("subtask", sub_event(sub, with_result=True))], now)
    return sub


def _close_open_rows(d: Dialect, task_id: str, status: str, why: str, now: Any) -> Op:
    """Settle every open reservation at its worst case (the provider may have billed
    it) and move the money from reserved to spent. Returns the rows closed."""
    rows = yield ("all", "OPEN_ROWS", {"t": task_id, "st": CallStatus.reserved.value})
    if rows:
        yield ("many", "CLOSE_ROW", [{"st": status, "now": now, "err": why, "id": r[0]} for r in rows])
    spent = sum(float(r[1]) for r in rows)
    yield ("exec", "MOVE_RESERVED", {"spent": spent, "now": now, "t": task_id})
    return len(rows)


def recover(d: Dialect, task_id: str) -> Op:
    now = d.now()
    n = yield from _close_open_rows(d, task_id, CallStatus.lost.value,
                                    "the process stopped while this call was in flight; counted at its worst case",
                                    now)
    for status in (SubtaskStatus.running, SubtaskStatus.awaiting_approval):  # the resumed run holds a call again
        yield ("exec", "RESET_RUNNING", {"t": task_id, "running": status.value, "pending": SubtaskStatus.pending.value})
    return n


def request_cancel(d: Dialect, task_id: str) -> Op:
    row = yield ("one", "REQUEST_CANCEL", {"t": task_id})
    return None if row is None else row[0]


def cancel_open(d: Dialect, task_id: str) -> Op:
    now = d.now()
    yield from _close_open_rows(d, task_id, CallStatus.canceled.value,
                                "canceled while in flight; counted at its worst case", now)
    calls = yield ("all", "TOOL_CALLS_UNKNOWN", {
        "t": task_id, "running": ToolCallStatus.running.value, "unknown": ToolCallStatus.unknown.value,
        "err": "canceled while in flight: it may or may not have happened", "now": now})
    calls = [*calls, *(yield from _deny_held(task_id, now))]
    items = [("tool_call", {"index": c.subtask, **tool_shown(c)}) for c in (tool_record(d, r) for r in calls)]
    items += (yield from _cancel_subtasks(d, task_id, now))
    if items:
        yield from _events(d, task_id, items, now)


def set_approved(d: Dialect, task_id: str) -> Op:
    yield ("exec", "SET_APPROVED", {"t": task_id})


def tool_call_started(d: Dialect, task_id: str, c: ToolCallRecord, *, acting: bool = True) -> Op:
    now = d.now()
    row = yield ("one", "TOOL_INTENT", {"id": c.id, "t": task_id, "i": c.subtask, "turn": c.turn,
                                        "mid": c.model_call_id, "tool": c.tool, "args": d.json(c.arguments),
                                        "st": ToolCallStatus.running.value, "now": now})
    rec = tool_record(d, row)
    items: list[tuple[str, dict[str, Any]]] = []
    # a direct call's subtask (no model call reserved for it) is running from its call's
    # intent, as is one whose held call is sent now
    if acting:
        sub = yield ("one", "MARK_ACTING", {"now": now, "t": task_id, "i": c.subtask,
                                            "pending": SubtaskStatus.pending.value,
                                            "aw": SubtaskStatus.awaiting_approval.value})
        if sub is not None:
            items.append(("subtask", row_event(sub)))
    items.append(("tool_call", {"index": rec.subtask, **tool_shown(rec)}))
    yield from _events(d, task_id, items, now)
    return rec


def tool_call_ended(d: Dialect, task_id: str, call_id: str, *, status: str, result: str | None,
                    error: str | None) -> Op:
    now = d.now()
    row = yield ("one", "TOOL_END", {"st": status, "res": result, "err": error, "now": now, "id": call_id,
                                     "t": task_id})
    if row is None:
        raise NotFound(f"no tool call {call_id!r} in task {task_id!r}")
    rec = tool_record(d, row)
    yield from _events(d, task_id, [("tool_call", {"index": rec.subtask, **tool_shown(rec)})], now)
    return rec


def tool_call_completed(d: Dialect, task_id: str, call_id: str, *, result: str) -> Op:
    """tool_call_ended (ok) and complete_subtask in one transaction: a direct call's
    result is its subtask's."""
    now = d.now()
    row = yield ("one", "TOOL_END", {"st": ToolCallStatus.ok.value, "res": result, "err": None, "now": now,
                                     "id": call_id, "t": task_id})
    if row is None:
        raise NotFound(f"no tool call {call_id!r} in task {task_id!r}")
    rec = tool_record(d, row)
    done = yield ("one", "COMPLETE_SUBTASK", {"res": result, "pr": None, "now": now, "t": task_id,
                                              "i": rec.subtask, "why": end_reason(SubtaskStatus.completed),
                                              "from": csv(subtask_sources(SubtaskStatus.completed))})
    items: list[tuple[str, dict[str, Any]]] = [("tool_call", {"index": rec.subtask, **tool_shown(rec)})]
    if done is None:  # it ended meanwhile (canceled): it stays so
        yield from _events(d, task_id, items, now)
        return (yield from _unchanged(d, task_id, rec.subtask))
    sub = sub_state(d, done)
    yield from _events(d, task_id, [*items, ("subtask", sub_event(sub, with_result=True))], now)
    return sub


def _deny_held(task_id: str, now: Any) -> Op:
    """A cancel's end of the calls awaiting approval: denied (they were never sent)."""
    rows = yield ("all", "TOOL_CALLS_UNKNOWN", {
        "t": task_id, "running": ToolCallStatus.awaiting_approval.value, "unknown": ToolCallStatus.denied.value,
        "err": "denied: the task was canceled while the call awaited approval", "now": now})
    return list(rows)


def tool_call_held(d: Dialect, task_id: str, c: ToolCallRecord, *, write: bool) -> Op:
    """A call held for approval (a fresh one when `write`; else the record's, found held
    again by a resumed run), and its subtask awaiting it, with their events."""
    now = d.now()
    yield ("one", "LOCK_TASK", {"t": task_id})
    items: list[tuple[str, dict[str, Any]]] = []
    rec = c
    if write:
        row = yield ("one", "TOOL_HOLD", {"id": c.id, "t": task_id, "i": c.subtask, "turn": c.turn,
                                          "mid": c.model_call_id, "tool": c.tool, "args": d.json(c.arguments),
                                          "st": ToolCallStatus.awaiting_approval.value, "now": now})
        rec = tool_record(d, row)
    sub = yield ("one", "MARK_AWAITING", {"now": now, "t": task_id, "i": c.subtask,
                                          "aw": SubtaskStatus.awaiting_approval.value,
                                          "pending": SubtaskStatus.pending.value,
                                          "running": SubtaskStatus.running.value})
    if sub is not None:
        items.append(("subtask", row_event(sub)))
    if write:
        items.append(("tool_call", {"index": rec.subtask, **tool_shown(rec)}))
    if items:
        yield from _events(d, task_id, items, now)
    return rec


def decide_tool_call(d: Dialect, task_id: str, call_id: str, *, approve: bool, by: str,
                     arguments: dict[str, Any] | None, message: str | None) -> Op:
    """See RunStore.decide_tool_call: the write applies only while the call awaits
    approval, so two decisions (two people, a person and the timeout) never both land."""
    now = d.now()
    task = yield ("one", "LOCK_TASK", {"t": task_id})
    if task is None:
        raise _not_found(task_id)
    if task[0] in TERMINAL_TASK:
        raise Conflict(f"task {task_id} is {task[0]}; its tool calls can no longer be approved or denied")
    if approve:
        status, error, done = ToolCallStatus.running.value, None, None
    else:
        status, done = ToolCallStatus.denied.value, now
        error = f"denied by {by}" + (f": {message}" if message else "")
    row = yield ("one", "TOOL_DECIDE", {
        "st": status, "dec": "approved" if approve else "denied", "by": by, "now": now, "err": error, "ca": done,
        "da": None if arguments is None else d.json(arguments), "msg": message, "id": call_id, "t": task_id,
        "aw": ToolCallStatus.awaiting_approval.value})
    if row is None:
        found = yield ("one", "TOOL_CALL_STATUS", {"id": call_id, "t": task_id})
        if found is None:
            raise NotFound(f"no tool call {call_id[:80]!r} in task {task_id!r}")
        raise Conflict(f"tool call {call_id} is {found[0]}; only a call awaiting approval can be approved or denied")
    rec = tool_record(d, row)
    items: list[tuple[str, dict[str, Any]]] = [("tool_call", {"index": rec.subtask, **tool_shown(rec)})]
    sub = yield ("one", "UNMARK_AWAITING", {"t": task_id, "i": rec.subtask,
                                            "aw": SubtaskStatus.awaiting_approval.value,
                                            "running": SubtaskStatus.running.value})
    if sub is not None:
        items.insert(0, ("subtask", row_event(sub)))
    yield from _events(d, task_id, items, now)
    return rec


def tool_calls(d: Dialect, task_id: str, subtask: int) -> Op:
    rows = yield ("all", "TOOL_CALLS", {"t": task_id, "i": subtask})
    return [tool_record(d, r) for r in rows]


def complete_subtask(d: Dialect, task_id: str, index: int, *, result: str, partial_reason: str | None) -> Op:
    now = d.now()
    row = yield ("one", "COMPLETE_SUBTASK", {"res": result, "pr": partial_reason, "now": now, "t": task_id,
                                             "i": index, "why": end_reason(SubtaskStatus.completed),
                                             "from": csv(subtask_sources(SubtaskStatus.completed))})
    if row is None:  # it ended meanwhile (canceled): it stays so, and nothing is told
        return (yield from _unchanged(d, task_id, index))
    sub = sub_state(d, row)
    yield from _events(d, task_id, [("subtask", sub_event(sub, with_result=True))], now)
    return sub


# reads ----------------------------------------------------------------------------------


def load(d: Dialect, task_id: str) -> Op:
    row = yield ("one", "LOAD_TASK", {"t": task_id})
    if row is None:
        return None
    subs = yield ("all", "LOAD_SUBTASKS", {"t": task_id})
    return TaskState(id=row[0], user_id=row[1], prompt=row[2], status=row[3], priority=row[4], approve=bool(row[5]),
                     budget_usd=row[6], plan_in=d.loads(row[7]), reasoning=row[8], total_cost_usd=row[9],
                     reserved_usd=row[10], cancel_requested=bool(row[11]), event_seq=row[12],
                     context=d.loads(row[13]), answer_max_tokens=row[14], rerun_of=row[15],
                     tier_models=d.loads(row[16]),
                     subtasks=[sub_state(d, s) for s in subs])


def unfinished_task_ids(d: Dialect) -> Op:
    rows = yield ("all", "UNFINISHED", {"terminal": [s.value for s in TERMINAL_TASK]})
    return [r[0] for r in rows]


def budget_left(d: Dialect, task_id: str) -> Op:
    row = yield ("one", "BUDGET_LEFT", {"t": task_id})
    return 0.0 if row is None else max(0.0, float(row[0]))


def user_daily_budget(d: Dialect, user_id: str | None, default: float | None) -> Op:
    if user_id is None:
        return default
    row = yield ("one", "USER_DAILY_BUDGET", {"u": user_id})
    return row[0] if row is not None and row[0] is not None else default


def events_after(d: Dialect, task_id: str, seq: int, limit: int) -> Op:
    rows = yield ("all", "EVENTS_AFTER", {"t": task_id, "s": seq, "n": limit})
    return [Event(task_id, int(r[0]), r[1], d.loads(r[2])) for r in rows]


def _not_found(task_id: str) -> NotFound:
    return NotFound(f"no task with id {task_id[:80]!r}")


def head(d: Dialect, task_id: str, user_id: str | None) -> Op:
    row = yield ("one", "HEAD", {"t": task_id})
    if row is None or (user_id is not None and row[1] != user_id):
        raise _not_found(task_id)
    return TaskHead(id=row[0], user_id=row[1], status=row[2], event_seq=int(row[3]))


def snapshot(d: Dialect, task_id: str, user_id: str | None) -> Op:
    """The task, its subtasks and its calls by part: three statements in one read."""
    _, body = yield from versioned_snapshot(d, task_id, user_id)
    return body


def _worst(calls: int, cost: float) -> dict[str, Any]:
    return {"calls": calls, "cost_usd": cost}


def ledger_parts(rows: Sequence[Sequence[Any]]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """SNAP_LEDGER's rows summed by part of the task: ("planner", None), ("synthesis",
    None) and ("subtask", index), each with its cost, tokens, calls, the model of its
    latest call, and what of it is booked at the worst case (calls lost in a crash or a
    timeout, or canceled in flight: their real cost is unknown)."""
    parts: dict[tuple[str, int | None], dict[str, Any]] = {}
    for kind, index, model, worst, cost, tokens_in, tokens_out, calls, last in rows:
        if kind == CallKind.check:  # a cascade's check is part of its subtask's cost
            kind = CallKind.subtask.value
        part = parts.setdefault((str(kind), None if kind != CallKind.subtask else int(index)), {
            "model": model, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0, "calls": 0,
            "worst_case": _worst(0, 0.0), "last": last})
        part["cost_usd"] += float(cost)
        part["input_tokens"] += int(tokens_in)
        part["output_tokens"] += int(tokens_out)
        part["calls"] += int(calls)
        if worst:
            part["worst_case"] = _worst(part["worst_case"]["calls"] + int(calls),
                                        part["worst_case"]["cost_usd"] + float(cost))
        if last > part["last"]:
            part["model"], part["last"] = model, last
    return parts


def _part(parts: dict[tuple[str, int | None], dict[str, Any]], key: tuple[str, int | None],
          model: str | None = None) -> dict[str, Any]:
    """A part as the snapshot shows it: worst_case null when nothing is booked so."""
    p = parts.get(key) or {"model": model, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0, "calls": 0,
                           "worst_case": _worst(0, 0.0)}
    return {"model": model or p["model"], "cost_usd": p["cost_usd"], "input_tokens": p["input_tokens"],
            "output_tokens": p["output_tokens"], "calls": p["calls"],
            "worst_case": p["worst_case"] if p["worst_case"]["calls"] else None}


def versioned_snapshot(d: Dialect, task_id: str, user_id: str | None) -> Op:
    """(the task's head, its snapshot) from the same statements: the head's event
    sequence names exactly this body. Costs by part come from the ledger, so the
    planner's, each subtask's and the synthesis's add up to the task's total, worst-case
    bookings included; money is rounded as every view shows it (core/money.py)."""
    t = yield ("one", "SNAP_TASK", {"t": task_id})
    if t is None or (user_id is not None and t[1] != user_id):
        raise _not_found(task_id)
    subs = yield ("all", "SNAP_SUBTASKS", {"t": task_id})
    rows = yield ("all", "SNAP_LEDGER", {"t": task_id, "lost": CallStatus.lost.value,
                                         "canceled": CallStatus.canceled.value})
    calls: dict[int, list[dict[str, Any]]] = {}
    if any((s[15] or "llm") != "llm" or d.loads(s[16]) for s in subs):
        for r in (yield ("all", "SNAP_TOOL_CALLS", {"t": task_id})):
            rec = tool_record(d, r)
            calls.setdefault(rec.subtask, []).append(tool_shown(rec))
    parts = ledger_parts(rows)
    planner = _part(parts, (CallKind.planner.value, None), t[15]) if t[15] or (CallKind.planner.value, None) in parts \
        else None
    synthesis = _part(parts, (CallKind.synthesis.value, None)) if (CallKind.synthesis.value, None) in parts else None
    worst = [p["worst_case"] for p in parts.values()]
    head = TaskHead(id=t[0], user_id=t[1], status=t[3], event_seq=int(t[16]))
    body = {
        "id": t[0], "prompt": t[2], "status": t[3], "reasoning": t[4], "result": t[5], "error": t[6],
        "budget_usd": t[7], "total_cost_usd": t[8], "priority": t[9], "prompt_versions": d.loads(t[10]),
        "created_at": iso(d.dt(t[11])), "planned_at": iso(d.dt(t[12])), "started_at": iso(d.dt(t[13])),
        "completed_at": iso(d.dt(t[14])), "planner": planner, "synthesis": synthesis,
        "worst_case": _worst(sum(w["calls"] for w in worst), sum(w["cost_usd"] for w in worst)),
        "warnings": list(d.loads(t[17]) or []), "rerun_of": t[18],
        "replans": list(d.loads(t[19]) or []), "end_reason": t[20],
        "subtasks": [_sub_snapshot(d, s, parts.get((CallKind.subtask.value, int(s[0]))), calls.get(int(s[0])))
                     for s in subs],
    }
    return head, money_shown(body)


def _sub_snapshot(d: Dialect, s: Sequence[Any], part: dict[str, Any] | None,
                  calls: list[dict[str, Any]] | None) -> dict[str, Any]:
    worst = part["worst_case"] if part is not None and part["worst_case"]["calls"] else None
    return {"index": s[0], "description": s[1], "tier_hint": s[2], "tier_assigned": s[3], "model": s[4],
            "depends_on": list(d.loads(s[5]) or []), "status": s[6], "result": s[7], "error": s[8],
            "attempts": s[9], "cost_usd": part["cost_usd"] if part is not None else s[10],
            "input_tokens": s[11], "output_tokens": s[12], "worst_case": worst,
            "started_at": iso(d.dt(s[13])), "completed_at": iso(d.dt(s[14])),
            "kind": s[15] or "llm", "tools": list(d.loads(s[16]) or []), "tool_calls": calls or [],
            "partial_reason": s[17],
            "optional_depends_on": list(d.loads(s[18]) or []), "reused_from": s[19],
            "round": s[20] or 0, "end_reason": s[21]}


def task_counts(d: Dialect) -> Op:
    rows = yield ("all", "TASK_COUNTS", {})
    return {r[0]: int(r[1]) for r in rows}


def principal_for_token(d: Dialect, digest: str) -> Op:
    """The lookup is by hash (not secret); the caller compares again in constant time."""
    row = yield ("one", "TOKEN", {"h": digest})
    if row is None or row[4] is not None:
        return None
    return row[2], Principal(user_id=row[1], user_name=row[5],
                             scopes=frozenset(s for s in row[3].split(",") if s), token_id=row[0])


def period_starts(now: datetime) -> dict[str, datetime]:
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {"today_usd": day, "week_usd": day - timedelta(days=day.weekday()), "month_usd": day.replace(day=1)}
