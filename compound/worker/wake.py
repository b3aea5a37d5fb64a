"""Waking DBOS's queue thread when work may be waiting, instead of at its next poll.

DBOS 3.4 dequeues from a queue in one thread per queue that sleeps
`polling_interval_sec` between polls (`stop_event.wait(timeout)` in
dbos/_queue.py's `queue_worker_thread`) and has no way to wake it early. Polling
often enough to start a task within a few milliseconds costs each idle worker a
quarter of a core (measured: docs/benchmarks.md), so the worker polls seldom and is
rung instead: the API NOTIFYs `compound_queue_wake` after each enqueue, and a worker
rings itself when one of its tasks ends (a slot of its own is free). The ring only
ends the thread's sleep early: the dequeue itself, with its per-worker and global
limits, is still DBOS's own. A lost ring costs one polling interval, no more.

The hook: `queue_worker_thread(stop_event, dbos, queue)` is looked up in its module
each time DBOS starts a queue's thread (a private name: worker/dbos_private.py), so
`install` wraps it to hand our queue's thread a `_Waiter` in place of the stop event
(it uses only `wait` and `is_set`).
If a DBOS release changes that function, `install` says so and returns False, and
the workers poll as before (slower to start, still correct)."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from compound.core.logging import get_logger
from compound.worker import dbos_private

log = get_logger("compound.worker.wake")

# How often a waiting queue thread looks at DBOS's own stop event (which cannot ring
# us): bounds how long DBOS.destroy waits for the thread when nobody rang the bell.
STOP_CHECK_S = 0.5


class Doorbell:
    """Rung from any thread; ends the current (or next) wait of the queue thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rung = False
        self._closed = False
        self._paused = False
        self._parked = False  # the queue thread sits in a paused wait

    def ring(self) -> None:
        with self._cond:
            self._rung = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the queue thread at its next wait (this worker takes no more tasks)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def pause(self) -> None:
        """Hold the queue thread at its next wait (no claims) until `resume`."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._rung = True  # poll at once: work may have waited meanwhile
            self._cond.notify_all()

    def wait_parked(self, timeout: float) -> bool:
        """(Blocking) until the paused queue thread sits in its wait, so no claim of
        its is under way; False if it did not come within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._parked or self._closed) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._parked or self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, stop: threading.Event, timeout: float | None) -> bool:
        """Sleep until rung, closed, `stop` is set or `timeout` passes; True when the
        thread should stop. A ring that came while the thread was busy polling ends
        the next wait at once (no ring is lost between a poll and its sleep). While
        paused, the thread stays in here whatever rings (`resume` lets it poll)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                while self._paused and not (self._closed or stop.is_set()):
                    if not self._parked:
                        self._parked = True
                        self._cond.notify_all()
                    self._cond.wait(STOP_CHECK_S)
                self._parked = False
                if self._rung or self._closed or stop.is_set():
                    break
                left = STOP_CHECK_S if deadline is None else min(STOP_CHECK_S, deadline - time.monotonic())
                if left <= 0:
                    break
                self._cond.wait(left)  # a pause meanwhile parks the thread at once, with no poll
            self._rung = False
            return self._closed or stop.is_set()


class _Waiter:
    """What DBOS's queue thread gets in place of its stop event."""

    def __init__(self, stop: threading.Event, bell: Doorbell) -> None:
        self._stop = stop
        self._bell = bell

    def is_set(self) -> bool:
        return self._stop.is_set() or self._bell.closed

    def wait(self, timeout: float | None = None) -> bool:
        return self._bell.wait(self._stop, timeout)


_bells: dict[str, Doorbell] = {}  # queue name -> the bell of this process's worker


def install(queue_name: str, bell: Doorbell) -> bool:
    """Route `queue_name`'s queue thread through `bell` (call before DBOS starts the
    thread, i.e. before registering the queue). False if this DBOS cannot be hooked."""
    current = dbos_private.queue_thread()
    original: Callable[..., Any] | None = getattr(current, "__compound_original__", None)
    if original is None:
        if list(inspect.signature(current).parameters)[:3] != dbos_private.QUEUE_THREAD_PARAMETERS:
            log.warning("this DBOS's queue thread cannot be woken; workers start tasks at their next poll",
                        polling="COMPOUND_QUEUE_POLLING_INTERVAL_S")
            return False
        original = current

        def queue_worker_thread(stop_event: threading.Event, dbos: Any, queue: Any) -> None:
            original(stop_event_for(stop_event, queue.name), dbos, queue)

        queue_worker_thread.__compound_original__ = original  # type: ignore[attr-defined]
        dbos_private.set_queue_thread(queue_worker_thread)
    _bells[queue_name] = bell
    return True


def stop_event_for(stop_event: threading.Event, queue_name: str) -> threading.Event | _Waiter:
    """What a queue's thread gets to wait on: a queue with a bell is woken by it."""
    bell = _bells.get(queue_name)
    return stop_event if bell is None else _Waiter(stop_event, bell)


def uninstall(queue_name: str) -> None:
    _bells.pop(queue_name, None)
