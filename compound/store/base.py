"""The RunStore seam: everything about a task's life, async, behind one interface.

The executor, the API routes, the CLI and the live streams use a RunStore and never an
Engine. One implementation per database (store/sqlite.py, store/postgres.py), chosen
by URL in `open_store`. A write commits its state change and the event that tells the
world about it together; the store then publishes the event to subscribers. The store
never mutates the caller's objects: a write returns the new state instead.

Event data shapes (the contract between the executor, SSE and the dashboard):
  kind "task":    {"status", "error", "total_cost_usd", "result"?: str}
  kind "subtask": {"index", "status", "model", "tier_assigned", "attempts",
                   "cost_usd", "input_tokens", "output_tokens", "error", "result"?: str,
                   "partial_reason"?: str}
  kind "tool_call": {"index", "id", "tool", "arguments", "status", "result", "error",
                     "started_at", "completed_at"} (result cut to TOOL_RESULT_SHOWN_CHARS)
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from compound.core.logging import get_logger
from compound.store.models import TERMINAL_TASK

task_log = get_logger("compound.task")


def log_status(task_id: str, status: str, *, error: str | None = None, total: float | None = None,
               subtasks: int | None = None) -> None:
    """One structured log line per task state change, written by the store once the
    change is committed (both dialects call this, after their write)."""
    status = str(getattr(status, "value", status))
    fields: dict[str, Any] = {"task_id": task_id, "status": status}
    if total is not None:
        fields["cost_usd"] = round(float(total), 9)
    if subtasks is not None:
        fields["subtasks"] = subtasks
    if error:
        fields["error"] = error[:500]
    (task_log.warning if status in ("failed", "partial") else task_log.info)("task status", **fields)


@dataclass(frozen=True, slots=True)
class Event:
    """One committed state change of a task; `seq` is its id within the task (SSE id)."""

    task_id: str
    seq: int
    kind: str  # "task" | "subtask"
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        """The task's last event: a task event with a terminal status."""
        return self.kind == "task" and self.data.get("status") in TERMINAL_TASK


@dataclass(frozen=True, slots=True)
class SubState:
    """A subtask as the executor sees it (a value: the store returns new ones)."""

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
    # design.md section 11: "llm" (its model may call `tools`) or "tool" (one direct call)
    kind: str = "llm"
    tools: list[str] = field(default_factory=list)
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    partial_reason: str | None = None

    optional: list[int] = field(default_factory=list)  # the dependencies it can do without
    reused_from: str | None = None  # the task whose result this one reuses (a re-run's)
    round: int = 0  # 0: the first plan; n: added by replanning round n
    end_reason: str | None = None  # why it ended (core/status.py EndReason); None while it has not


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call of a subtask as recorded: `id` is its idempotency key; `turn` the
    model turn that asked for it (0: a direct call); `model_call_id` the provider's id."""

    id: str
    subtask: int
    turn: int
    model_call_id: str | None
    tool: str
    arguments: dict[str, Any]
    status: str  # ToolCallStatus
    result: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # the decision on a call held for approval (design.md section 11)
    decision: str | None = None  # "approved" | "denied"
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_arguments: dict[str, Any] | None = None
    decision_message: str | None = None

    @property
    def sent_arguments(self) -> dict[str, Any]:
        """What the call is sent with: the arguments approved, else the model's."""
        return self.decided_arguments if self.decided_arguments is not None else self.arguments


@dataclass(frozen=True, slots=True)
class TaskState:
    """A task and its subtasks as the executor sees it."""

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
    event_seq: int
    subtasks: list[SubState] = field(default_factory=list)
    # A conversation's earlier messages (the chat door) and a bound on the answer.
    context: list[dict[str, str]] | None = None
    answer_max_tokens: int | None = None
    rerun_of: str | None = None  # the task this one re-runs (its unchanged results are reused)
    tier_models: dict[str, list[str]] | None = None  # {"2": [...]}: this task's models for a tier


@dataclass(frozen=True, slots=True)
class TaskHead:
    """The few columns a route needs to authorize and version a task."""

    id: str
    user_id: str | None
    status: str
    event_seq: int


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """One call's worst case to reserve before it is sent. With `subtask`, the
    reservation also counts the attempt and marks the subtask running."""

    task_id: str
    user_id: str | None
    kind: str  # CallKind
    subtask: int | None
    tier: int | None
    model: str
    attempt: int
    amount: float
    daily_budget: float | None


@dataclass(frozen=True, slots=True)
class Reservation:
    ledger_id: int
    amount: float


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """The task's budget has no room for the call: `left` of it is unreserved."""

    left: float


@dataclass(frozen=True, slots=True)
class DailyRefusal:
    """The user's daily budget has no room for the call: `spent` today already."""

    spent: float


ReserveOutcome = Reservation | BudgetRefusal | DailyRefusal


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a reserved call ended. `status` is a CallStatus; `complete_with` completes
    the subtask with that result in the same transaction; `answer` keeps a planner
    call's text on its ledger row, so a task resumed before its plan was saved plans
    from it instead of paying for the call again."""

    status: str
    cost_usd: float
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float | None = None
    error: str | None = None
    complete_with: str | None = None
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's user and scopes."""

    user_id: str
    user_name: str
    scopes: frozenset[str]
    token_id: str

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


@dataclass
class StoreStats:
    """Counters for tests and benchmarks: reads and writes asked of the store, and
    transactions committed (a group commit covers many writes)."""

    reads: int = 0
    writes: int = 0
    commits: int = 0


class Subscription:
    """New events of one task, in seq order, as the store commits them. Made by
    RunStore.subscribe; use as `async with store.subscribe(t, after=n) as sub:
    async for ev in sub`. With `after`, the events already committed past it are
    replayed first, so nothing falls between a read and the subscription. A gap
    (possible when commits of another process arrive out of order) is filled by one
    read; nothing is read while nothing happens."""

    def __init__(self, store: RunStore, task_id: str, *, after: int | None) -> None:
        self.store = store
        self.task_id = task_id
        self.last = after
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.idle = False  # waiting for the next event, reading nothing
        self._pending: list[Event] = []

    async def __aenter__(self) -> Subscription:
        self.store.hub.add(self.task_id, self)
        if self.last is not None:
            self._pending = await self.store.events_after(self.task_id, self.last)
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.store.hub.discard(self.task_id, self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._pending:
                ev = self._pending.pop(0)
            else:
                self.idle = True
                try:
                    ev = await self.queue.get()
                finally:
                    self.idle = False
            if self.last is not None:
                if ev.seq <= self.last:
                    continue  # replayed already, or published twice (local and NOTIFY)
                if ev.seq > self.last + 1:  # a gap: read what fell in it, then go on
                    missed = await self.store.events_after(self.task_id, self.last)
                    if missed:
                        self._pending = [e for e in missed if e.seq <= ev.seq] + [
                            e for e in self._pending if e.seq > ev.seq]
                        if not any(e.seq == ev.seq for e in missed):
                            self._pending.append(ev)
                        continue
            self.last = ev.seq
            return ev


class EventHub:
    """In-process fan-out of committed events to the subscriptions of each task.

    Subscriptions and listeners live on the hub's home loop (the one the store was
    opened on). A write committed on another thread (SQLite's writer thread) publishes
    through the home loop's call_soon_threadsafe, in commit order."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._listeners: list[Callable[[Sequence[Event]], None]] = []
        self.home: asyncio.AbstractEventLoop | None = None

    def listen(self, callback: Callable[[Sequence[Event]], None]) -> Callable[[], None]:
        """Call `callback` with every batch of committed events of every task (e.g. a
        cache of snapshots kept current). Returns the function that stops it. The
        callback runs on the event loop and must not block."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def add(self, task_id: str, sub: Subscription) -> None:
        self._subs.setdefault(task_id, set()).add(sub)

    def discard(self, task_id: str, sub: Subscription) -> None:
        subs = self._subs.get(task_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[task_id]

    def watched(self, task_id: str) -> bool:
        """Someone here wants this task's events (a subscription, or a listener to all)."""
        return task_id in self._subs or bool(self._listeners)

    def watched_since(self) -> dict[str, int | None]:
        """Each task subscribed to here, and the oldest event seq its subscriptions have
        seen (None when one of them has seen none: it takes whatever comes next)."""
        out: dict[str, int | None] = {}
        for task_id, subs in self._subs.items():
            lasts = [s.last for s in subs]
            out[task_id] = None if any(last is None for last in lasts) else min(
                last for last in lasts if last is not None)
        return out

    def idle(self) -> int:
        """Subscriptions waiting for an event now (tests and diagnostics)."""
        return sum(1 for subs in self._subs.values() for s in subs if s.idle)

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        home = self.home
        if home is not None and asyncio.events._get_running_loop() is not home:
            with contextlib.suppress(RuntimeError):  # the home loop has closed: nobody listens
                home.call_soon_threadsafe(self._publish, list(events))
            return
        self._publish(events)

    def _publish(self, events: Sequence[Event]) -> None:
        for ev in events:
            for s in self._subs.get(ev.task_id, ()):
                s.queue.put_nowait(ev)
        for callback in list(self._listeners):
            callback(events)


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

    async def __aenter__(self) -> RunStore:
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
                        prompt_versions: dict[str, str], status: str, warnings: Sequence[str] = ()) -> bool:
        """Insert the subtasks and move the task to `status` (planned), together; nothing
        when the task may not move there (it ended meanwhile). Says whether it applied."""

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
    async def tool_call_started(self, task_id: str, call: ToolCallRecord) -> ToolCallRecord:
        """Write a call's intent (`running`) before it is sent, with its event; a call
        sent again (same id) starts over."""

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

    @abc.abstractmethod
    async def principal_for_token(self, token: str) -> Principal | None:
        """The principal of a live (unrevoked) token, or None."""
