"""The event hub: committed events fanned out, in this process, to the subscriptions of
each task (RunStore.subscribe), and a subscription's own replay and gap filling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Protocol

from compound.store.values import Event


class EventSource(Protocol):
    """What a subscription needs of its store: the hub and the committed events."""

    hub: EventHub

    async def events_after(self, task_id: str, seq: int, limit: int = 500) -> list[Event]: ...


class Subscription:
    """New events of one task, in seq order, as the store commits them. Made by
    RunStore.subscribe; use as `async with store.subscribe(t, after=n) as sub:
    async for ev in sub`. With `after`, the events already committed past it are
    replayed first, so nothing falls between a read and the subscription. A gap
    (possible when commits of another process arrive out of order) is filled by one
    read; nothing is read while nothing happens."""

    def __init__(self, store: EventSource, task_id: str, *, after: int | None) -> None:
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
