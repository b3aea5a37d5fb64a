"""The Executor's lifecycle: start, stop, submit, cancel, approve, resume, wait.

`run_task` is idempotent: it reads the task's state and goes on from there, so a
restart resumes what was running and a completed subtask is never called again. A
task's workflow is in workflow.py, its model calls in calls.py. Waiting for a task
is a subscription on its events (no polling)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from compound.core.errors import Conflict, DatabaseUnavailable, NotFound
from compound.core.logging import get_logger
from compound.core.money import Price
from compound.core.settings import Settings
from compound.executor.answers import AnswerStreams
from compound.executor.calls import ModelCalls, ModelSlots, Sleep
from compound.executor.hooks import CallObserver
from compound.executor.steps import InDoubt, ToolSteps
from compound.executor.workflow import Workflow
from compound.llm.base import LLMClient
from compound.prompts import versions
from compound.store.base import RunStore
from compound.store.models import TERMINAL_TASK, EndReason, TaskStatus
from compound.tools.catalogue import Tools

if TYPE_CHECKING:
    from compound.tools.servers import ToolServers

log = get_logger("compound.executor")
# A task whose store went away is run again after this, doubling up to the max.
OUTAGE_RETRY_S = 0.2
OUTAGE_RETRY_MAX_S = 5.0
PLANNED_OR_LATER = frozenset({TaskStatus.planned, TaskStatus.executing}) | TERMINAL_TASK


class TaskWaits:
    """Waiting for a task, as every executor front (this one, the threaded one, the queue
    backend) offers it: a subscription on `store`'s events, no polling."""

    store: RunStore

    async def wait(self, task_id: str, timeout: float | None = None) -> str:
        """Until the task is terminal; returns its status."""
        return await self.store.wait_for_status(task_id, TERMINAL_TASK, timeout)

    async def wait_planned(self, task_id: str, timeout: float | None = None) -> str:
        """Until the task has a plan (or ended without one); returns its status."""
        return await self.store.wait_for_status(task_id, PLANNED_OR_LATER, timeout)


class Executor(TaskWaits):
    """Runs tasks in this process, bounded by COMPOUND_MAX_CONCURRENCY calls in flight
    across all tasks (served by priority), plus per-model limits from the config."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: RunStore,
        client: LLMClient,
        price_of: Callable[[str], Price] | None = None,
        observers: Sequence[CallObserver] = (),
        sleep: Sleep = asyncio.sleep,
        model_slots: ModelSlots | None = None,
        stream_answers: bool = False,
        answers: AnswerStreams | None = None,
        owns_client: bool = False,
        tools: Tools | None = None,
        in_doubt: InDoubt | None = None,
    ) -> None:
        self.settings = settings
        self._owns_client = owns_client  # warmed at start, closed at stop
        self.store = store
        self.client = client
        if price_of is None:
            from compound.llm.pricing import pricer

            price_of = pricer(settings)
        self.price_of: Callable[[str], Price] = price_of
        self.calls = ModelCalls(settings=settings, store=store, client=client, price_of=self.price_of,
                                observers=observers, sleep=sleep, model_slots=model_slots)
        self._answers = answers if answers is not None else AnswerStreams()
        if stream_answers:
            self.calls.answers = self._answers
        # The MCP servers' tools: given (the server's own ToolServers), or opened by
        # start() from the `mcp_servers` setting (a child process, a queue worker).
        self.tools = tools
        self._own_tools: ToolServers | None = None
        steps = ToolSteps(settings=settings, store=store, calls=self.calls, tools=lambda: self.tools,
                          in_doubt=in_doubt)
        self.workflow = Workflow(settings=settings, store=store, calls=self.calls, versions=versions(), steps=steps)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancels: set[asyncio.Task[None]] = set()  # cancels heard from another process
        self._stopping = False

    @property
    def answers(self) -> AnswerStreams:
        """The streamed synthesis answers, per task (executor/answers.py): the front doors
        listen here. Only when the executor was made with stream_answers=True is the
        synthesis call streamed; otherwise no piece ever comes."""
        return self._answers

    async def start(self) -> list[str]:
        """Resume every task that was not terminal when the last process stopped (the
        MCP servers connected first, when this executor opens its own)."""
        if self._owns_client:
            await self.client.warm()
        await self.open_tools()
        ids = await self.store.unfinished_task_ids()
        for task_id in ids:
            self.submit(task_id)
        if ids:
            log.info("resuming tasks", count=len(ids))
        return ids

    async def open_tools(self) -> None:
        """Connect the MCP servers of the `mcp_servers` setting, when this executor was
        given no tools (stop() closes them). A host that never calls start() (a queue
        worker) calls this before it runs a task; a second call does nothing."""
        if self.tools is None and self.settings.mcp_servers:
            from compound.tools.servers import ToolServers

            self._own_tools = ToolServers(self.settings.mcp_servers)
            await self._own_tools.start()
            self.tools = self._own_tools

    async def stop(self) -> None:
        """Stop running tasks (the next start resumes them), their calls in flight booked
        by what is known of them before the store is let go."""
        self._stopping = True
        ids = list(self._running)
        tasks = [*self._cancels, *self._running.values()]  # a cancel heard stays requested in the store
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for task_id in ids:
            await self.calls.quiesce(task_id)
        if self._own_tools is not None:
            await self._own_tools.stop()
            self._own_tools = self.tools = None
        if self._owns_client:
            await self.client.aclose()

    def submit(self, task_id: str) -> None:
        """Run the task in the background (no-op when it already runs here)."""
        current = self._running.get(task_id)
        if current is not None and not current.done():
            return
        task = asyncio.get_running_loop().create_task(self._guarded(task_id))
        self._running[task_id] = task

    async def dispatch(self, task_id: str, *, priority: int) -> None:  # noqa: ARG002 (the queue backend uses it)
        """Start a task the API has just stored (the queue backend's dispatch enqueues it;
        here `priority` is read from the store, where it orders the task's calls)."""
        self.submit(task_id)

    async def _guarded(self, task_id: str) -> None:
        try:
            await self._run_through_outages(task_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never lose a task silently: record why it stopped
            log.exception("task crashed", task_id=task_id)
            try:
                await self.calls.quiesce(task_id)
                await self.store.recover(task_id)  # its open calls count at their worst case
                await self.store.set_status_unless_ended(task_id, TaskStatus.failed,
                                                         error=f"internal error: {type(exc).__name__}",
                                                         reason=EndReason.internal)
            except Exception:  # pragma: no cover - the store itself is gone
                log.exception("could not record the failure", task_id=task_id)
        finally:
            if self._running.get(task_id) is asyncio.current_task():
                self._running.pop(task_id, None)
                self.calls.answered.discard(task_id)

    async def _run_through_outages(self, task_id: str) -> None:
        """run_task, again when the database went away meanwhile: nothing was decided
        while it was gone (run_task is idempotent, and books the calls that were in
        flight as lost), so the task goes on once the store answers, never failed for it."""
        delay = OUTAGE_RETRY_S
        while True:
            try:
                await self.run_task(task_id)
                return
            except DatabaseUnavailable as exc:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError from exc  # stopped meanwhile: not an outage to ride out
                log.warning("database unavailable; the task goes on when it is back", task_id=task_id,
                            error=exc.message, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTAGE_RETRY_MAX_S)

    async def run_here(self, task_id: str) -> None:
        """Run the task as submit() does and return when it stops (a queue worker's
        entry point): cancel() reaches it, and a cancel is an ordinary end, not an error."""
        self.submit(task_id)
        task = self._running.get(task_id)
        if task is None:
            return
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._stopping or (me is not None and me.cancelling()):
                raise  # this worker is stopping: the task stays for another to resume
            # else cancel() stopped the task and finished it as canceled

    def is_running(self, task_id: str) -> bool:
        running = self._running.get(task_id)
        return running is not None and not running.done()

    async def abandon(self, task_id: str) -> None:
        """Stop this process's run of a task that ended elsewhere (canceled by an API)."""
        running = self._running.get(task_id)
        if running is not None and not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    def cancel_heard(self, task_id: str) -> None:
        """A host in another process asked for the task's cancel (a Cancel signal, after
        recording the request in the store): stop the run here, if it runs here. The
        host learns the outcome from the task's end in the store."""
        if self.is_running(task_id):
            heard = asyncio.get_running_loop().create_task(self._cancel_here(task_id))
            self._cancels.add(heard)
            heard.add_done_callback(self._cancels.discard)

    async def _cancel_here(self, task_id: str) -> None:
        try:
            await self.cancel(task_id)
        except (Conflict, NotFound):
            # it ended otherwise first, or the host ended it canceled (it ran nowhere
            # yet when the host looked): stop this run, which would be refused anyway
            await self.abandon(task_id)

    async def cancel(self, task_id: str) -> None:
        """End the task as canceled. Conflict when it ended otherwise first, also when
        its answer had come back before the cancel did (the task then completes)."""
        status = await self.store.request_cancel(task_id)
        if status is None:
            raise NotFound(f"no task with id {task_id!r}")
        if status in TERMINAL_TASK:
            raise Conflict(f"task {task_id} is already {status}; only a running task can be canceled")
        running = self._running.get(task_id)
        if running is not None and not running.done():
            if task_id not in self.calls.answered:
                running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        if not await self._finish_canceled(task_id):
            head = await self.store.head(task_id)
            if head.status == TaskStatus.canceled:  # its run saw the request first and ended it so
                return
            raise Conflict(f"task {task_id} {head.status} before the cancel reached it; its result stands")

    async def approve(self, task_id: str) -> None:
        st = await self.store.load(task_id)
        if st is None:
            raise NotFound(f"no task with id {task_id!r}")
        if st.status != TaskStatus.planned or st.approve:
            raise Conflict(f"task {task_id} is {st.status}; only a planned task waiting for approval can be approved")
        await self.store.set_approved(task_id)
        self.submit(task_id)

    async def wake(self, task_id: str) -> None:
        self.workflow.steps.approvals.wake(task_id)

    async def _finish_canceled(self, task_id: str) -> bool:
        """Close the task's books and end it canceled, unless it has ended; whether it did.
        Its reservations and settlements in flight commit first (calls.quiesce), so the
        one transaction that ends it leaves nothing reserved."""
        await self.calls.quiesce(task_id)
        return await self.store.set_status_unless_ended(task_id, TaskStatus.canceled, error="canceled by request")

    async def run_task(self, task_id: str) -> None:
        """Take the task from whatever state the store has it in to a terminal state (or
        to `planned`, when it waits for approval)."""
        st = await self.store.load(task_id)
        if st is None:
            raise NotFound(f"no task with id {task_id!r}")
        if st.status in TERMINAL_TASK:
            return
        if st.cancel_requested:
            await self._finish_canceled(task_id)
            return
        if st.status != TaskStatus.queued:  # a queued task has never sent a call
            await self.store.recover(task_id)  # a previous process's open calls are lost
            st = await self.store.load(task_id)
            assert st is not None
        # A cancel() interrupts this and finishes the task as canceled; a shutdown
        # leaves it for the next start to resume.
        await self.workflow.run(st)


__all__ = ["Executor", "TaskWaits"]
