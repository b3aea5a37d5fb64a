"""A task's tool-call transitions (store/ops.py's kind: sans-I/O generators): a call's
intent, end, hold for approval and the decision on it, each with its events."""

from __future__ import annotations

from typing import Any

from compound.core.errors import Conflict, NotFound
from compound.core.status import csv, end_reason, subtask_sources
from compound.store.models import (
    TERMINAL_TASK,
    SubtaskStatus,
    ToolCallStatus,
)
from compound.store.ops import (
    Dialect,
    Op,
    append_events,
    not_found,
    row_event,
    sub_event,
    sub_state,
    tool_record,
    tool_shown,
    unchanged,
)
from compound.store.values import (
    ToolCallRecord,
)


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
    yield from append_events(d, task_id, items, now)
    return rec


def tool_call_ended(d: Dialect, task_id: str, call_id: str, *, status: str, result: str | None,
                    error: str | None) -> Op:
    now = d.now()
    row = yield ("one", "TOOL_END", {"st": status, "res": result, "err": error, "now": now, "id": call_id,
                                     "t": task_id})
    if row is None:
        raise NotFound(f"no tool call {call_id!r} in task {task_id!r}")
    rec = tool_record(d, row)
    yield from append_events(d, task_id, [("tool_call", {"index": rec.subtask, **tool_shown(rec)})], now)
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
        yield from append_events(d, task_id, items, now)
        return (yield from unchanged(d, task_id, rec.subtask))
    sub = sub_state(d, done)
    yield from append_events(d, task_id, [*items, ("subtask", sub_event(sub, with_result=True))], now)
    return sub


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
        yield from append_events(d, task_id, items, now)
    return rec


def decide_tool_call(d: Dialect, task_id: str, call_id: str, *, approve: bool, by: str,
                     arguments: dict[str, Any] | None, message: str | None) -> Op:
    """See RunStore.decide_tool_call: the write applies only while the call awaits
    approval, so two decisions (two people, a person and the timeout) never both land."""
    now = d.now()
    task = yield ("one", "LOCK_TASK", {"t": task_id})
    if task is None:
        raise not_found(task_id)
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
    yield from append_events(d, task_id, items, now)
    return rec


def tool_calls(d: Dialect, task_id: str, subtask: int) -> Op:
    rows = yield ("all", "TOOL_CALLS", {"t": task_id, "i": subtask})
    return [tool_record(d, r) for r in rows]
