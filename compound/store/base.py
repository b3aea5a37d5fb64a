"""The RunStore seam: everything about a task's life, async, behind one interface.

The executor, the API routes, the CLI and the live streams use a RunStore and never an
Engine. One implementation per database (store/sqlite.py, store/postgres.py), chosen
by URL in `open_store`. A write commits its state change and the event that tells the
world about it together; the store then publishes the event to subscribers. The store
never mutates the caller's objects: a write returns the new state instead.

The values the methods take and return are in store/values.py; the in-process event
hub and subscriptions in store/hub.py. Users and API tokens are separate, smaller
interfaces (store/users.py: UserStore, TokenAdmin) that the same implementations also
provide (store.Store).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Collection, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from compound.store.hub import EventHub, Subscription
from compound.store.values import (
    Event,
    Reservation,
    ReserveOutcome,
    ReserveRequest,
    Settlement,
    StoreStats,
    SubState,
    TaskHead,
    TaskState,
    ToolCallRecord,
)


class RunStore(abc.ABC):
    """A task's whole life in the store. Every method is a coroutine that never
    blocks the event loop. Writes return values; they never change their arguments.
    `NotFound` (compound.core.errors) for a task that does not exist, or, with
    `user_id`, belongs to another user."""

    # True when writes commit in the order they were asked for (SQLite's one writer),
    # so a caller may go on before a write commits when a later awaited write covers it.
    ordered_writes = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.hub = EventHub()
        self.stats = StoreStats()

    @property
    def in_memory(self) -> bool:
        """A database no other process can open (SQLite's :memory:)."""
        return False

    @property
    @abc.abstractmethod
    def engine(self) -> Any:
        """A synchronous SQLAlchemy Engine on the same database, for admin commands
        (users, tokens) and tests. Never used on the executor's or a route's path."""

    # life of the store ----------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create missing tables, start the writer / listener."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    async def write_from_here(self) -> None:
        """Commit this store's writes on the calling loop, the one that makes nearly all
        of them (the executor's own process, executor/child.py), when the store can:
        SQLite's one writer moves there from its thread, so no write waits for a thread
        to wake and hand it back. By default nothing changes. close() undoes it."""
        return

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # subscriptions --------------------------------------------------------------------

    def subscribe(self, task_id: str, *, after: int | None = None) -> Subscription:
        """New events of the task as they commit (in this process and, on PostgreSQL,
        in every process on the database). With `after`, replay events past it first."""
        return Subscription(self, task_id, after=after)

    async def wait_for_status(self, task_id: str, statuses: frozenset[str], timeout: float | None) -> str:
        """Until the task is in one of `statuses`; returns it. Subscribes first, then
        reads the status once (a change between the two is in the subscription); then
        nothing is read until an event comes. TimeoutError after `timeout` seconds."""
        async with self.subscribe(task_id) as sub:
            status = (await self.head(task_id)).status
            if status in statuses:
                return status
            try:
                async with asyncio.timeout(timeout):
                    async for ev in sub:
                        if ev.kind == "task" and ev.data["status"] in statuses:
                            return str(ev.data["status"])
            except TimeoutError:
                raise TimeoutError(f"task {task_id} not {'/'.join(sorted(statuses))} after {timeout}s") from None
        raise AssertionError("unreachable: a subscription does not end")  # pragma: no cover

    # a task's life: writes -------------------------------------------------------------

    @abc.abstractmethod
    async def create_task(self, *, prompt: str, budget_usd: float, user_id: str | None = None,
                          priority: int = 2, plan_in: dict[str, Any] | None = None,
                          approve: bool = True, context: list[dict[str, str]] | None = None,
                          answer_max_tokens: int | None = None, rerun_of: str | None = None,
                          tier_models: dict[str, list[str]] | None = None) -> TaskState:
        """Insert a queued task and its first event. The plan must be validated."""

    @abc.abstractmethod
    async def set_status(self, task_id: str, status: str, *, error: str | None = None,
                         result: str | None = None, reason: str | None = None) -> bool:
        """The task's status (error/result, why it ended, timestamps) and its event,
        written only from a status core/status.py allows; says whether it applied."""

    @abc.abstractmethod
    async def set_planner_model(self, task_id: str, model: str) -> None: ...

    @abc.abstractmethod
    async def save_plan(self, task_id: str, *, reasoning: str | None, subtasks: Sequence[SubState],
                        prompt_versions: dict[str, str], status: str, warnings: Sequence[str] = (),
                        size: int | None = None) -> bool:
        """Insert the subtasks and move the task to `status` (planned), together; nothing
        when the task may not move there (it ended meanwhile). Says whether it applied.
        `size`: the plan's number of subtasks when they were added as the plan streamed
        (add_subtasks) and `subtasks` is empty; the status log line tells it."""

    @abc.abstractmethod
    async def add_subtasks(self, task_id: str, subtasks: Sequence[SubState], *,
                           replan: dict[str, Any] | None = None) -> None:
        """Insert subtasks into a task that runs (a streamed plan's entries, a replanning
        round's additions); with `replan`, record the round and tell it in a task event."""

    @abc.abstractmethod
    async def replace_pending(self, task_id: str, sub: SubState) -> SubState:
        """A subtask that has not started takes new words, tier and dependencies (a
        streamed entry the whole plan changed); NotFound unless it is pending."""

    @abc.abstractmethod
    async def end_subtask(self, task_id: str, index: int, *, status: str, error: str | None,
                          reason: str | None = None) -> SubState:
        """A subtask ends without a result (failed, skipped) and why (an EndReason);
        returns its new state, or its state as it is when it had ended already."""

    @abc.abstractmethod
    async def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveOutcome]:
        """Reserve each call's worst case against its task's budget (and its user's
        day), in one transaction. Subtask calls of one task asked for together (a
        fan-out) share one budget check, all or none; when all do not fit they are
        tried one by one. A refusal writes nothing."""

    @abc.abstractmethod
    async def settle(self, task_id: str, reservation: Reservation, subtask: int | None,
                     outcome: Settlement) -> SubState | None:
        """Settle a reservation to its real cost (and complete the subtask with
        `outcome.complete_with`). Returns the subtask's new state when there is one."""

    @abc.abstractmethod
    async def recover(self, task_id: str) -> int:
        """After a crash: open reservations become `lost` at their worst case and
        running subtasks go back to pending. Returns the rows lost."""

    @abc.abstractmethod
    async def request_cancel(self, task_id: str) -> str | None:
        """Flag the task for cancel; returns its status (None when it does not exist)."""

    @abc.abstractmethod
    async def cancel_open(self, task_id: str) -> None:
        """Cancel every unfinished subtask (with events); open calls count at their
        reservation (a call we abandoned may have been billed)."""

    @abc.abstractmethod
    async def set_status_unless_ended(self, task_id: str, status: str, *, error: str | None = None,
                                      result: str | None = None, only_from: Collection[str] | None = None,
                                      reason: str | None = None) -> bool:
        """Write the task's status only from a status core/status.py allows (and, given
        `only_from`, only from one of those); says whether it applied. `reason`: why it
        ended (an EndReason; by default what the status says). Ending it `canceled` also
        closes its open ledger rows and subtasks in the same transaction."""

    @abc.abstractmethod
    async def set_approved(self, task_id: str) -> None: ...

    # tool calls (design.md section 11) -------------------------------------------------

    @abc.abstractmethod
    async def tool_call_started(self, task_id: str, call: ToolCallRecord, *, acting: bool = True) -> ToolCallRecord:
        """Write a call's intent (`running`) before it is sent, with its event; a call
        sent again (same id) starts over. `acting`: its subtask runs from this call on
        (pending or awaiting approval before it: a direct call's, a held call's once
        decided); False for a call of a loop whose model turn has it running already."""

    @abc.abstractmethod
    async def tool_call_ended(self, task_id: str, call_id: str, *, status: str, result: str | None,
                              error: str | None) -> ToolCallRecord:
        """A call's outcome (ok, error, timeout, unknown), with its event."""

    @abc.abstractmethod
    async def tool_call_completed(self, task_id: str, call_id: str, *, result: str) -> SubState:
        """A direct call's `ok` outcome and its subtask's completion with `result`, in one
        transaction, with their events; returns the subtask's state."""

    @abc.abstractmethod
    async def tool_call_held(self, task_id: str, call: ToolCallRecord, *, write: bool = True) -> ToolCallRecord:
        """A call that waits for approval: written `awaiting_approval` (unless `write`
        is False: it is already), its subtask `awaiting_approval`, with their events."""

    @abc.abstractmethod
    async def decide_tool_call(self, task_id: str, call_id: str, *, approve: bool, by: str,
                               arguments: dict[str, Any] | None = None,
                               message: str | None = None) -> ToolCallRecord:
        """Record a person's decision on a call awaiting approval, only while it awaits
        it: approved, it goes `running` (sent with `arguments` when given); denied, it
        ends `denied` with `message`. Its subtask runs again; events for both. NotFound
        for no such call, Conflict when it does not await approval."""

    @abc.abstractmethod
    async def tool_calls(self, task_id: str, subtask: int) -> list[ToolCallRecord]:
        """A subtask's recorded tool calls, oldest first (replayed on resume)."""

    @abc.abstractmethod
    async def complete_subtask(self, task_id: str, index: int, *, result: str,
                               partial_reason: str | None = None) -> SubState:
        """A subtask completes with `result` (its tool loop stopped early when
        `partial_reason` is set), with its event; one that had ended is returned as it is."""

    # a task's life: reads --------------------------------------------------------------

    @abc.abstractmethod
    async def load(self, task_id: str) -> TaskState | None:
        """The task and its subtasks (the executor's view), or None."""

    @abc.abstractmethod
    async def unfinished_task_ids(self) -> list[str]:
        """Tasks not in a terminal status, most urgent and oldest first."""

    @abc.abstractmethod
    async def budget_left(self, task_id: str) -> float:
        """The task's budget not spent nor reserved."""

    @abc.abstractmethod
    async def user_daily_budget(self, user_id: str | None, default: float | None) -> float | None: ...

    @abc.abstractmethod
    async def events_after(self, task_id: str, seq: int, limit: int = 500) -> list[Event]:
        """The task's events with seq > `seq`, in order."""

    # route-facing reads ----------------------------------------------------------------

    @abc.abstractmethod
    async def task_tokens(self, task_id: str) -> tuple[int, int]:
        """(input, output) tokens of every call the task made (the chat door's usage)."""

    @abc.abstractmethod
    async def ledger_rows(self, task_id: str) -> list[dict[str, Any]]:
        """A task's ledger, oldest first, as plain dicts (the evals price them again)."""

    @abc.abstractmethod
    async def head(self, task_id: str, *, user_id: str | None = None) -> TaskHead:
        """Id, owner, status and event seq; NotFound (another user's task too)."""

    @abc.abstractmethod
    async def snapshot(self, task_id: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The progress snapshot of design.md section 5 (GET /v1/tasks/{id})."""

    @abc.abstractmethod
    async def versioned_snapshot(self, task_id: str) -> tuple[TaskHead, dict[str, Any]]:
        """snapshot() and the head it is as of, in one read: the head's event sequence
        names exactly this body (the snapshot cache's ETag)."""

    @abc.abstractmethod
    async def list_tasks(self, *, user_id: str | None, limit: int = 20, status: str | None = None,
                         cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Task summaries, newest first (user_id None: everyone's) and the next cursor."""

    @abc.abstractmethod
    async def costs(self, *, since: datetime, until: datetime, group_by: str | None,
                    user_id: str | None) -> dict[str, Any]:
        """Spend from the ledger: totals and groups by day, model, tier or user."""

    @abc.abstractmethod
    async def spend_summary(self, *, user_id: str | None) -> dict[str, float]:
        """Spend today, this week and this month."""

    @abc.abstractmethod
    async def task_counts(self) -> dict[str, int]:
        """Tasks by status (metrics)."""
