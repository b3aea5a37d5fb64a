"""A model call's money (store/ops.py's kind: sans-I/O generators): the reservation of its
worst case against the task's and the user's budgets, and its settlement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from compound.core.status import csv, end_reason, subtask_sources
from compound.store.models import (
    CallStatus,
    SubtaskStatus,
)
from compound.store.ops import EPS, Dialect, Op, append_events, row_event, sub_event, sub_state
from compound.store.values import (
    BudgetRefusal,
    DailyRefusal,
    Reservation,
    ReserveOutcome,
    ReserveRequest,
    Settlement,
)


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
        yield from append_events(d, rs[0].task_id, events, now)
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
        yield from append_events(d, task_id, [("subtask", sub_event(sub, with_result=True))], now)
    return sub
