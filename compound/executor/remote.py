"""The engine in another process, as the routes see it: one host over a signal bus
(signals/bus.py) and a Starter, the one thing that differs between a child process
(executor/process.py) and DBOS's queue workers (worker/backend.py).

What the host does itself, whatever the Starter:
- answers: a door's listener here publishes Listen, and the Answer pieces heard are
  handed to the listeners here (executor/answers.py's RemoteAnswers);
- Events heard (SQLite's commits, relayed by the child) reach this store's hub;
- approve checks and records the approval in the store, then starts the task again;
- wake publishes Wake; the waits subscribe to the store's events (TaskWaits);
- cancel records the request in the store, ends there a task that runs nowhere yet
  (queued, or held at planned), publishes Cancel for the process running it (its
  executor stops the run: Executor.cancel_heard) and waits for the task's end, so the
  answer says what happened.
What the Starter does: start and stop hosting, and start a task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from compound.core.errors import Conflict, NotFound
from compound.core.logging import get_logger
from compound.core.money import Price
from compound.core.settings import Settings
from compound.executor.answers import RemoteAnswers
from compound.executor.service import TaskWaits
from compound.signals.bus import Answer, Cancel, Events, Signals, Wake
from compound.store.base import RunStore
from compound.store.models import TERMINAL_TASK, TaskStatus

log = get_logger("compound.executor.remote")

# How long a cancel waits for the process running the task to stop it, so the answer
# usually shows `canceled`; past it the answer shows the task as it is (the flag stays,
# and a run resumed later ends the task canceled).
CANCEL_WAIT_S = 10.0


class Starter(Protocol):
    """How a remote host starts (and stops) the tasks it hands on."""

    async def start(self) -> list[str]:
        """Start hosting; the ids of the tasks resumed (or enqueued) at start."""

    async def stop(self) -> None:
        """Stop hosting; running tasks stay for the next start."""

    async def start_task(self, task_id: str, priority: int, *, approved: bool = False) -> None:
        """Run a stored task (again, once `approved`); returns without waiting for it."""


class RemoteHost(TaskWaits):
    """An ExecutorHost (executor/host.py) whose engine runs elsewhere."""

    def __init__(self, *, settings: Settings, store: RunStore, signals: Signals, starter: Starter,
                 price_of: Callable[[str], Price] | None = None) -> None:
        self.settings = settings
        self.store = store  # this process's: waits subscribe here
        self.signals = signals
        self.starter = starter
        if price_of is None:
            from compound.llm.pricing import pricer

            price_of = pricer(settings)
        self.price_of: Callable[[str], Price] = price_of
        self.answers = RemoteAnswers(signals.publish)
        signals.subscribe(Answer, self.answers.relay)
        signals.subscribe(Events, lambda e: self.store.hub.publish(e.events))

    async def start(self) -> list[str]:
        await self.signals.start()
        return await self.starter.start()

    async def stop(self) -> None:
        await self.starter.stop()
        await self.signals.stop()

    async def dispatch(self, task_id: str, *, priority: int) -> None:
        """Start a task the API has just stored; returns at once."""
        await self.starter.start_task(task_id, priority)

    async def cancel(self, task_id: str) -> None:
        """End the task as canceled wherever it is; Conflict when it ended otherwise
        first (its answer existed before the cancel reached the process running it)."""
        status = await self.store.request_cancel(task_id)
        if status is None:
            raise NotFound(f"no task with id {task_id!r}")
        if status in TERMINAL_TASK:
            raise Conflict(f"task {task_id} is already {status}; only a running task can be canceled")
        # Not started, or held at `planned`: it runs nowhere, so it ends here. A run
        # taking it this moment finds its next status write refused and stops there.
        ended_here = await self.store.set_status_unless_ended(
            task_id, TaskStatus.canceled, error="canceled by request",
            only_from=(TaskStatus.queued, TaskStatus.planned))
        await self.signals.send(Cancel(task_id))
        if ended_here:
            return
        try:
            final = await self.store.wait_for_status(task_id, TERMINAL_TASK, CANCEL_WAIT_S)
        except TimeoutError:
            log.warning("cancel requested; the task has not stopped yet", task_id=task_id)
            return
        if final != TaskStatus.canceled:
            raise Conflict(f"task {task_id} {final} before the cancel reached it; its result stands")

    async def approve(self, task_id: str) -> None:
        st = await self.store.load(task_id)
        if st is None:
            raise NotFound(f"no task with id {task_id!r}")
        if st.status != TaskStatus.planned or st.approve:
            raise Conflict(f"task {task_id} is {st.status}; only a planned task waiting for approval can be approved")
        await self.store.set_approved(task_id)
        await self.starter.start_task(task_id, st.priority, approved=True)

    async def wake(self, task_id: str) -> None:
        """Tell the run holding the task's tool call that a decision is in the store."""
        self.signals.publish(Wake(task_id))


__all__ = ["RemoteHost", "Starter"]
