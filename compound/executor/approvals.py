"""Tool calls held for a person's decision (design.md section 11, "Approval of
actions"). The store is the truth: a route writes the decision only while the call
awaits it (RunStore.decide_tool_call), and the run that holds the call waits on the
task's events, re-reads the row, and denies the call itself once
COMPOUND_APPROVAL_TIMEOUT_S has passed. Where events of another process do not reach
this one's hub (an executor child on SQLite), the host wakes the waiter (`wake`); a
re-read every RECHECK_S seconds is the safety net."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from compound.core.errors import Conflict
from compound.core.logging import get_logger
from compound.store.base import RunStore
from compound.store.models import ToolCallStatus
from compound.store.values import ToolCallRecord

log = get_logger("compound.executor")
RECHECK_S = 5.0  # between re-reads of a held call's row when nothing wakes its waiter
SYSTEM = "system"  # who decided, when no person did (the timeout, a cancel)


class Approvals:
    """The waits of this process's held calls, by task."""

    def __init__(self, *, store: RunStore, timeout_s: float, recheck_s: float = RECHECK_S) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.recheck_s = recheck_s
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def wake(self, task_id: str) -> None:
        """A decision on one of the task's calls was written: its waiters read again."""
        for ev in self._waiters.get(task_id, ()):
            ev.set()

    async def decision(self, task_id: str, call: ToolCallRecord) -> ToolCallRecord:
        """Until the held call is decided: its row once it no longer awaits approval
        (approved: `running`; denied: `denied`). Denied here when the timeout passes."""
        woken = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(woken)
        deadline = (call.started_at or datetime.now(UTC)) + timedelta(seconds=self.timeout_s)
        try:
            async with self.store.subscribe(task_id) as sub:
                async def pump() -> None:
                    async for ev in sub:
                        if (ev.kind == "tool_call" and ev.data.get("id") == call.id) or ev.terminal:
                            woken.set()

                pumping = asyncio.create_task(pump())
                try:
                    return await self._until_decided(task_id, call, deadline, woken)
                finally:
                    pumping.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pumping
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[task_id]

    async def _until_decided(self, task_id: str, call: ToolCallRecord, deadline: datetime,
                             woken: asyncio.Event) -> ToolCallRecord:
        while True:
            woken.clear()
            rec = await self._read(task_id, call)
            if rec.status != ToolCallStatus.awaiting_approval:
                return rec
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                try:
                    rec = await self.store.decide_tool_call(
                        task_id, call.id, approve=False, by=SYSTEM,
                        message=f"no decision within {self.timeout_s:g} s (COMPOUND_APPROVAL_TIMEOUT_S)")
                except Conflict:
                    continue  # decided meanwhile: read it again
                log.info("tool call denied: no decision in time", task_id=task_id, call_id=call.id)
                return rec
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self.recheck_s)):
                    await woken.wait()

    async def _read(self, task_id: str, call: ToolCallRecord) -> ToolCallRecord:
        for rec in await self.store.tool_calls(task_id, call.subtask):
            if rec.id == call.id:
                return rec
        raise AssertionError(f"the held tool call {call.id} is not in the store")  # pragma: no cover


__all__ = ["SYSTEM", "Approvals"]
