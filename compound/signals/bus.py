"""What crosses a process boundary, as typed signals on one publish/subscribe bus.

The engine may run in another process than the routes (executor/remote.py): whatever
one side must tell the other travels as one of the signals below, through a `Signals`
transport. One implementation per transport:

  LocalSignals   (here)                    one process: direct calls, on the loop
  SocketSignals  (signals/socket_pair.py)  the child process's socket pair: frames
  PgSignals      (signals/postgres.py)     PostgreSQL LISTEN/NOTIFY (queue mode, the store)

A subscriber is called once per signal, in publish order, on the loop it runs on; it
must be cheap and must not block (put on a queue, start a task). A transport that
cannot reach the other side drops what it is given (logged): every user has a slower
fallback (the store's flags and events, a restart that resumes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from compound.core.logging import get_logger
from compound.store.values import Event

log = get_logger("compound.signals.bus")


@dataclass(frozen=True, slots=True)
class Events:
    """Committed events of the store, for the hub of a process that cannot hear the
    database (SQLite): the child relays its commits to the server."""

    events: Sequence[Event]


@dataclass(frozen=True, slots=True)
class Committed:
    """The store `origin` committed task `task_id`'s events `first`..`last` on a shared
    database (PostgreSQL): the store of every other process reads them and gives them to
    its hub (each store gives its own commits to its hub as it makes them)."""

    origin: str
    task_id: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run this stored task (the child process: its executor submits it)."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """The task's cancel is requested in the store: the process running it stops it
    (Executor.cancel_heard) and ends it canceled."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Wake:
    """A decision on one of the task's held tool calls is in the store: read it now."""

    task_id: str


@dataclass(frozen=True, slots=True)
class QueueWake:
    """Work may wait in the queue: a task enqueued (its id), or a slot freed ("")."""

    task_id: str = ""


@dataclass(frozen=True, slots=True)
class SlotFree:
    """A call of this model ended on some worker: one of its shared slots is free."""

    model: str


@dataclass(frozen=True, slots=True)
class Listen:
    """A door's client here starts (or, `wanted` False, stops) listening to the task's
    streamed answer: the side running it relays the pieces while someone wants them."""

    task_id: str
    wanted: bool = True


@dataclass(frozen=True, slots=True)
class Answer:
    """A piece of a streamed synthesis answer (executor/answers.py): op is begin, delta
    or end of the attempt."""

    op: str
    task_id: str
    attempt: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    """A model call's observation (CallObserver's method and its fields): metrics."""

    method: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stop:
    """Put the running tasks down (the next start resumes them) and exit."""


Signal = Events | Committed | Dispatch | Cancel | Wake | QueueWake | SlotFree | Listen | Answer | Observation | Stop
S = TypeVar("S", bound=Signal)
Handler = Callable[[Any], object]


class Signals(Protocol):
    """One transport between processes: publish a signal there, subscribe to a kind here."""

    def publish(self, signal: Signal) -> None:
        """Send it, after every signal published before; never waits."""

    async def send(self, signal: Signal) -> None:
        """Publish and return once the transport has taken it (PostgreSQL: the NOTIFY
        committed, DatabaseUnavailable when it could not be)."""

    def subscribe(self, kind: type[S], handler: Callable[[S], object]) -> Callable[[], None]:
        """Call `handler` with every signal of `kind` heard here; returns the unsubscribe."""

    async def start(self) -> None:
        """Begin hearing signals (a transport may take its subscriptions only before)."""

    async def stop(self) -> None:
        """Stop hearing; what was published before goes out first where it can."""


class Subscribers:
    """The handlers of each kind, and their calling: what every transport shares."""

    def __init__(self) -> None:
        self.handlers: dict[type, list[Handler]] = {}

    def subscribe(self, kind: type[S], handler: Callable[[S], object]) -> Callable[[], None]:
        self.handlers.setdefault(kind, []).append(handler)
        return lambda: self.handlers.get(kind, []).remove(handler)

    def deliver(self, signal: Signal) -> None:
        for handler in list(self.handlers.get(type(signal), ())):
            try:
                handler(signal)
            except Exception:  # one subscriber must not stop the others, nor the transport
                log.exception("a signal's subscriber failed", signal=type(signal).__name__)


class LocalSignals(Subscribers):
    """Both sides in this process: a signal published is delivered at once, in order."""

    def publish(self, signal: Signal) -> None:
        self.deliver(signal)

    async def send(self, signal: Signal) -> None:
        self.deliver(signal)

    async def start(self) -> None:
        return

    async def stop(self) -> None:
        return


__all__ = ["Answer", "Cancel", "Committed", "Dispatch", "Events", "Listen", "LocalSignals", "Observation", "QueueWake",
           "Signal", "Signals", "SlotFree", "Stop", "Subscribers", "Wake"]
