"""The engine in another process, as the routes see it: one host over a signal bus
(executor/signals.py) and a Starter, the one thing that differs between a child process
(executor/process.py) and DBOS's queue workers (worker/backend.py).

What the host does itself, whatever the Starter:
- answers: a door's listener here publishes Listen, and the Answer pieces heard are
  handed to the listeners here (executor/answers.py's RemoteAnswers);
- Events heard (SQLite's commits, relayed by the child) reach this store's hub;
- approve checks and records the approval in the store, then starts the task again;
- wake publishes Wake; the waits subscribe to the store's events (TaskWaits).
What the Starter does: start and stop hosting, start a task, and end one as canceled
(where the task runs decides how it is stopped: in the child, its executor answers;
in the queue, the task may sit in no process at all)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from compound.core.errors import Conflict, NotFound
from compound.core.money import Price
from compound.core.settings import Settings
from compound.executor.answers import RemoteAnswers
from compound.executor.service import TaskWaits
from compound.executor.signals import Answer, Events, Signals, Wake
from compound.store.base import RunStore
from compound.store.models import TaskStatus


class Starter(Protocol):
    """How a remote host starts (and stops) the tasks it hands on."""

    async def start(self) -> list[str]:
        """Start hosting; the ids of the tasks resumed (or enqueued) at start."""

    async def stop(self) -> None:
        """Stop hosting; running tasks stay for the next start."""

    async def start_task(self, task_id: str, priority: int, *, approved: bool = False) -> None:
        """Run a stored task (again, once `approved`); returns without waiting for it."""

    async def cancel(self, task_id: str) -> None:
        """End the task as canceled: NotFound, Conflict as ExecutorHost.cancel says."""


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
        await self.starter.cancel(task_id)

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
