"""Where tasks run, as every route and door sees it: one typed protocol, whatever
hosts the engine. Two hosts implement it:

  Executor (executor/service.py)          the engine on this process's own loop
                                           (the CLI's `compound run`, tests, an in-memory store)
  RemoteHost (executor/remote.py)         the engine in another process, over a signal bus
                                           (signals/bus.py); only its Starter differs:
    ProcessExecutor (executor/process.py)   a child process, signals on its socket pair
    QueueBackend (worker/backend.py)        DBOS workers on PostgreSQL, signals by NOTIFY

Every host reads and waits through the same store; cancel and approve say what really
happened (NotFound, Conflict); a host that cannot start raises ExecutorUnavailable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from compound.core.money import Price
from compound.executor.answers import AnswerStreams
from compound.store.base import RunStore


@runtime_checkable
class ExecutorHost(Protocol):
    """The engine's surface for the API: start and stop it, hand it a stored task,
    cancel, approve, wait, and listen to a task's answer as it is written."""

    store: RunStore
    price_of: Callable[[str], Price]

    @property
    def answers(self) -> AnswerStreams:
        """The streamed answers of the tasks this process's doors listen to."""

    async def start(self) -> list[str]:
        """Start hosting; returns the ids of the tasks resumed (or enqueued) at start."""

    async def stop(self) -> None:
        """Stop hosting; running tasks stay for the next start to resume."""

    async def dispatch(self, task_id: str, *, priority: int) -> None:
        """Start a task the API has just stored; returns without waiting for it."""

    async def cancel(self, task_id: str) -> None:
        """End the task as canceled; NotFound for no such task, Conflict when it ended
        otherwise first (its answer already existed). A remote host waits a while for
        the task's end and returns with the request stored when it has not ended yet."""

    async def approve(self, task_id: str) -> None:
        """Start a task held at `planned`; Conflict unless it waits for approval."""

    async def wake(self, task_id: str) -> None:
        """A decision on one of the task's held tool calls is in the store: the run that
        holds it reads it now (where the store's events do not reach that run)."""

    async def wait(self, task_id: str, timeout: float | None = None) -> str:
        """Until the task is terminal; its status."""

    async def wait_planned(self, task_id: str, timeout: float | None = None) -> str:
        """Until the task has a plan (or ended without one); its status."""


__all__ = ["ExecutorHost"]
