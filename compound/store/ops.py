"""A task's transitions, written once for every database (sans-I/O).

Each operation is a generator: it yields statements by name (("one" | "all" | "many" |
"exec", name, params)) and Events to publish, and is sent each statement's rows back.
A driver runs it inside one transaction: store/sqlite.py on its writer thread,
store/postgres.py on a pooled async connection. Each name's statement is written once
in store/statements.py and compiled for the driver's database (`Dialect.sql`).
The event sequence is advanced in one place: `append_events`. Beside this module, of
the same kind: ops_calls.py (a model call's money), ops_tools.py (tool calls and their
approvals), ops_reads.py (the reads).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from compound.core.errors import NotFound
from compound.core.money import shown_usd
from compound.core.status import csv, end_reason, subtask_sources, task_sources
from compound.store.models import (
    TERMINAL_TASK,
    CallStatus,
    SubtaskStatus,
    TaskStatus,
    ToolCallStatus,
)
from compound.store.values import (
    Event,
    SubState,
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


def append_events(d: Dialect, task_id: str, items: Sequence[tuple[str, dict[str, Any]]], now: Any) -> Op:
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


def not_found(task_id: str) -> NotFound:
    return NotFound(f"no task with id {task_id[:80]!r}")


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
    yield from append_events(d, task_id, [("task", {"status": TaskStatus.queued.value, "error": None})], now)
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
    total = yield from append_events(d, task_id, [*items, ("task", data)], now)
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
    return (yield from append_events(d, task_id, [("task", {"status": status, "error": None})], now))


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
    return (yield from append_events(d, task_id, [("task", {"status": row[0], "error": None, "replan": replan})], now))


def replace_pending(d: Dialect, task_id: str, sub: SubState) -> Op:
    """A subtask that has not started takes the whole plan's version of its entry."""
    row = yield ("one", "REPLACE_PENDING", {"d": sub.description, "th": sub.tier_hint, "ta": sub.tier_assigned,
                                            "ms": d.json(sub.models), "m": sub.model, "deps": d.json(sub.depends_on),
                                            "t": task_id, "i": sub.index})
    if row is None:
        raise NotFound(f"no pending subtask {sub.index} in task {task_id!r}")
    return sub_state(d, row)


def unchanged(d: Dialect, task_id: str, index: int) -> Op:
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
        return (yield from unchanged(d, task_id, index))
    sub = sub_state(d, row)
    yield from append_events(d, task_id, [("subtask", sub_event(sub))], now)
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
        yield from append_events(d, task_id, items, now)


def set_approved(d: Dialect, task_id: str) -> Op:
    yield ("exec", "SET_APPROVED", {"t": task_id})


def _deny_held(task_id: str, now: Any) -> Op:
    """A cancel's end of the calls awaiting approval: denied (they were never sent)."""
    rows = yield ("all", "TOOL_CALLS_UNKNOWN", {
        "t": task_id, "running": ToolCallStatus.awaiting_approval.value, "unknown": ToolCallStatus.denied.value,
        "err": "denied: the task was canceled while the call awaited approval", "now": now})
    return list(rows)


def complete_subtask(d: Dialect, task_id: str, index: int, *, result: str, partial_reason: str | None) -> Op:
    now = d.now()
    row = yield ("one", "COMPLETE_SUBTASK", {"res": result, "pr": partial_reason, "now": now, "t": task_id,
                                             "i": index, "why": end_reason(SubtaskStatus.completed),
                                             "from": csv(subtask_sources(SubtaskStatus.completed))})
    if row is None:  # it ended meanwhile (canceled): it stays so, and nothing is told
        return (yield from unchanged(d, task_id, index))
    sub = sub_state(d, row)
    yield from append_events(d, task_id, [("subtask", sub_event(sub, with_result=True))], now)
    return sub
