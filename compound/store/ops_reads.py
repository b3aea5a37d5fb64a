"""A task's reads (store/ops.py's kind: sans-I/O generators): its state for the executor,
its head and snapshot for the doors, the listings' counts, a token's principal."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from compound.core.money import money_shown
from compound.store.models import (
    TERMINAL_TASK,
    CallKind,
    CallStatus,
)
from compound.store.ops import Dialect, Op, iso, not_found, sub_state, tool_record, tool_shown
from compound.store.values import (
    Event,
    Principal,
    TaskHead,
    TaskState,
)


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


def head(d: Dialect, task_id: str, user_id: str | None) -> Op:
    row = yield ("one", "HEAD", {"t": task_id})
    if row is None or (user_id is not None and row[1] != user_id):
        raise not_found(task_id)
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
        raise not_found(task_id)
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
