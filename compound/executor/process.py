"""The Executor in a child process of its own (what `compound serve` runs by default).

Under load the executor wants a whole core: the provider SDKs building requests and
reading answers, the workflows, the store's commits. On the server's own loop, or on
a thread of its process (measured, docs/benchmarks.md: a slower /healthz tail and
fewer calls a second than here, at every size), it shares the HTTP loop's turn or its
GIL. In a process of its own it shares only the machine's cores, and the kernel wakes
the mostly idle HTTP process at once.

The child (`python -m compound.executor.child FD PID`) opens its own store handle on the
same database, builds its own SDK clients and runs a plain Executor; the server's
process keeps the routes, the waits and the streams (executor/remote.py). They talk
over a socket pair (signals/socket_pair.py): to the child Dispatch, Cancel, Wake,
Listen and Stop; to the server the child's committed events on SQLite (PostgreSQL's
LISTEN/NOTIFY carries them already), Answer pieces and the model calls' Observations
(metrics).

If the child dies, the server starts another, which resumes every unfinished task as a
restart does; the dispatches and cancels published meanwhile go to it (a cancel is in
the store as well: the resumed run ends the task canceled). If the server dies, the
child is killed with it (Linux's parent-death signal) or, elsewhere, stops when its
socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from compound.core.errors import ExecutorUnavailable
from compound.core.logging import get_logger
from compound.core.settings import Settings
from compound.executor.hooks import CallObserver
from compound.executor.remote import RemoteHost
from compound.signals.bus import Cancel, Dispatch, Listen, Observation, Stop
from compound.signals.socket_pair import SocketSignals, frame, read_frame
from compound.store.base import RunStore

log = get_logger("compound.executor")

# How long a start waits for the child to open the store and resume its tasks.
START_WAIT_S = 120.0
# How long a stop waits for the child to put its tasks down before it is killed.
STOP_WAIT_S = 15.0
# Between restarts of a child that keeps dying at once.
RESTART_WAITS_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)


class ChildStarter:
    """Starts tasks by telling the child process (Dispatch) and keeps one child alive
    (another when it dies)."""

    def __init__(self, *, settings: Settings, signals: SocketSignals, relay_events: bool,
                 observers: Sequence[CallObserver], stream_answers: bool, wanted: Callable[[], list[str]]) -> None:
        self.settings = settings
        self.signals = signals
        self._relay_events = relay_events
        self._observers = list(observers)
        self._stream_answers = stream_answers
        self._wanted = wanted  # the tasks listened to here, to tell a new child
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self._stopping = False
        self._restarts = 0
        self._open_calls: dict[tuple[str, str], list[float]] = {}  # (model, kind): when each began
        self._born = 0.0
        self.starts = 0  # children started (tests)
        signals.subscribe(Observation, self._observed)

    # life -------------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Start the child; it opens the store and the clients and resumes unfinished tasks."""
        return await self._spawn()

    async def _spawn(self) -> list[str]:
        mine, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "compound.executor.child", str(theirs.fileno()), str(os.getpid()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        resumed = await self._handshake(proc, reader, writer)
        self.proc = proc
        self.starts += 1
        self._born = asyncio.get_running_loop().time()
        self.signals.attach(writer)  # the dispatches held meanwhile go first
        for task_id in self._wanted():
            self.signals.publish(Listen(task_id))
        self.reader = asyncio.get_running_loop().create_task(self._read(reader, writer, proc),
                                                             name="executor-process")
        return resumed

    async def _handshake(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> list[str]:
        from compound.core.logging import effective_level

        writer.write(frame([("hello", {
            "settings": self.settings, "log_level": effective_level(self.settings.log_level),
            "relay_events": self._relay_events,
            "observe": bool(self._observers), "stream_answers": self._stream_answers})]))
        try:
            async with asyncio.timeout(START_WAIT_S):
                first = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            writer.close()
            if isinstance(exc, TimeoutError):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            code = await proc.wait()
            raise ExecutorUnavailable(f"the executor process did not start (exit code {code}); "
                                      "its log lines above say why") from None
        except BaseException:  # a stop while it started: no child is left behind
            writer.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        kind, value = first[0]
        if kind != "started":
            writer.close()
            await proc.wait()
            raise ExecutorUnavailable(f"the executor process could not start: {value}")
        resumed: list[str] = value
        return resumed

    async def stop(self) -> None:
        """Ask the child to stop its tasks (the next start resumes them) and exit."""
        self._stopping = True
        proc = self.proc
        if proc is None and self.reader is not None and not self.reader.done():
            # between a dead child and the next: no other is started (one starting is killed)
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
            proc = self.proc
        if proc is None or not self.signals.attached:
            return
        self.signals.publish(Stop())
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                await proc.wait()
        except TimeoutError:
            log.warning("the executor process did not stop in time: killing it", pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    proc: asyncio.subprocess.Process) -> None:
        try:
            await self.signals.serve(reader)
        except Exception:
            log.exception("the executor process's message could not be read")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = await proc.wait()
        self.signals.detach()
        writer.close()
        self.proc = None
        self._calls_lost()
        if not self._stopping:
            await self._restart(code)

    async def _restart(self, code: int) -> None:
        if asyncio.get_running_loop().time() - self._born > 60:
            self._restarts = 0  # it ran a while: not a child that dies at start
        wait = RESTART_WAITS_S[min(self._restarts, len(RESTART_WAITS_S) - 1)]
        log.error("the executor process exited; starting another, which resumes its tasks",
                  code=code, after_s=wait)
        self._restarts += 1
        while not self._stopping:
            await asyncio.sleep(wait)
            if self._stopping:
                return
            try:
                await self._spawn()
                return
            except Exception as exc:
                wait = RESTART_WAITS_S[-1]
                log.error("the executor process could not start again", error=str(exc), retry_in_s=wait)

    # what the child says ----------------------------------------------------------------

    def _observed(self, obs: Observation) -> None:
        key = (str(obs.fields.get("model")), str(obs.fields.get("kind")))
        if obs.method == "call_started":
            self._open_calls.setdefault(key, []).append(asyncio.get_running_loop().time())
        elif self._open_calls.get(key):
            self._open_calls[key].pop(0)
        self._observe(obs.method, obs.fields)

    def _observe(self, method: str, fields: dict[str, Any]) -> None:
        for o in self._observers:
            try:
                getattr(o, method)(**fields)
            except Exception:  # an observer must never break the stream
                log.exception("call observer failed")

    def _calls_lost(self) -> None:
        """The calls the dead child had in flight end here, `lost` (the next child books
        their reservations so in the ledger), so the metrics' in-flight gauge comes back."""
        now = asyncio.get_running_loop().time()
        for (model, kind), starts in self._open_calls.items():
            for started in starts:
                self._observe("call_finished", {
                    "model": model, "kind": kind, "tier": None, "status": "lost", "input_tokens": 0,
                    "output_tokens": 0, "cost_usd": 0.0, "latency_s": now - started})
        self._open_calls.clear()

    # what the host asks -----------------------------------------------------------------

    async def start_task(self, task_id: str, priority: int, *, approved: bool = False) -> None:  # noqa: ARG002
        """Tell the child (the next one, while none runs); the task's priority is in the
        store, where it orders the task's calls."""
        self.signals.publish(Dispatch(task_id))


class ProcessExecutor(RemoteHost):
    """An Executor (executor/service.py) in a child process: the same methods for the
    routes, awaited from the server's loop."""

    def __init__(self, *, settings: Settings, store: RunStore, observers: Sequence[CallObserver] = (),
                 stream_answers: bool = False) -> None:
        signals = SocketSignals(hold=(Dispatch, Cancel))
        # SQLite tells no other process of a commit: the child relays its events here.
        self.child = ChildStarter(settings=settings, signals=signals, relay_events=store.url.startswith("sqlite"),
                                  observers=observers, stream_answers=stream_answers,
                                  wanted=lambda: self.answers.wanted())
        super().__init__(settings=settings, store=store, signals=signals, starter=self.child)

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.child.proc

    @property
    def starts(self) -> int:
        """Children started (tests)."""
        return self.child.starts

    @property
    def _reader(self) -> asyncio.Task[None] | None:
        return self.child.reader


__all__ = ["ChildStarter", "ProcessExecutor"]
