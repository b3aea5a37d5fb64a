"""The Executor in a child process of its own (what `compound serve` runs by default).

Under load the executor wants a whole core: the provider SDKs building requests and
reading answers, the workflows, the store's commits. On the server's own loop, or on
a thread of its process (measured, docs/benchmarks.md: a slower /healthz tail and
fewer calls a second than here, at every size), it shares the HTTP loop's turn or its
GIL. In a process of its own it shares only the machine's cores, and the kernel wakes
the mostly idle HTTP process at once.

The child (`python -m compound.executor.child FD PID`) opens its own store handle on the
same database, builds its own SDK clients and runs a plain Executor; the server's
process keeps the routes, the waits and the streams. They talk over a socket pair,
frames of pickled messages (executor/child.py lists them):
- to the child: dispatch (a task id), cancel and approve (answered, with their errors),
  wake (a decision on a held tool call is in the store),
  listen/unlisten (a door's client wants a task's answer as it is written), stop;
- to the server: the child's committed events on SQLite (PostgreSQL's LISTEN/NOTIFY
  carries them already), the pieces of a streamed answer, the model calls' observations
  (metrics), and replies.

If the child dies, the server starts another, which resumes every unfinished task as a
restart does; a call it was waiting for answers 503. If the server dies, the child is
killed with it (Linux's parent-death signal) or, elsewhere, stops when its socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

from compound.core import errors
from compound.core.errors import CompoundError, ExecutorUnavailable
from compound.core.logging import get_logger
from compound.core.money import Price
from compound.core.settings import Settings
from compound.executor.answers import RemoteAnswers
from compound.executor.hooks import CallObserver
from compound.executor.service import TaskWaits
from compound.store.base import RunStore

log = get_logger("compound.executor")

Message = tuple[Any, ...]
_HEADER = struct.Struct("!I")
# How long a start waits for the child to open the store and resume its tasks.
START_WAIT_S = 120.0
# How long a stop waits for the child to put its tasks down before it is killed.
STOP_WAIT_S = 15.0
# Between restarts of a child that keeps dying at once.
RESTART_WAITS_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)


def frame(messages: Sequence[Message]) -> bytes:
    body = pickle.dumps(list(messages), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[Message]:
    """The next frame's messages; IncompleteReadError at the end of the stream."""
    size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
    messages: list[Message] = pickle.loads(await reader.readexactly(size))
    return messages


class Outbox:
    """Messages written in one turn of the loop go out as one frame at its end."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: list[Message] = []

    def send(self, message: Message) -> None:
        if self.writer.is_closing():
            return
        self.pending.append(message)
        if len(self.pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self.pending and not self.writer.is_closing():
            self.writer.write(frame(self.pending))
        self.pending = []


class ProcessExecutor(TaskWaits):
    """An Executor (executor/service.py) in a child process: the same methods for the
    routes, awaited from the server's loop."""

    def __init__(self, *, settings: Settings, store: RunStore, observers: Sequence[CallObserver] = (),
                 stream_answers: bool = False) -> None:
        self.settings = settings
        self.store = store  # this process's: waits subscribe here
        self.answers = RemoteAnswers(self._send)
        self._observers = list(observers)
        self._stream_answers = stream_answers
        from compound.llm.pricing import price_of

        self.price_of: Callable[[str], Price] = lambda m: price_of(m, settings)
        # SQLite tells no other process of a commit: the child sends its events here.
        self._relay_events = store.url.startswith("sqlite")
        self.proc: asyncio.subprocess.Process | None = None
        self._outbox: Outbox | None = None
        self._reader: asyncio.Task[None] | None = None
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._stopping = False
        self._restarts = 0
        self._held: list[Message] = []  # sent while no child runs: for the next one
        self._open_calls: dict[tuple[str, str], list[float]] = {}  # (model, kind): when each began
        self._born = 0.0
        self.starts = 0  # children started (tests)

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
        self.proc = proc
        self.starts += 1
        self._born = asyncio.get_running_loop().time()
        self._outbox = Outbox(writer)
        self._reader = asyncio.get_running_loop().create_task(self._read(reader, proc), name="executor-process")
        for task_id in self.answers.wanted():
            self._outbox.send(("listen", task_id))
        held, self._held = self._held, []
        for message in held:
            self._outbox.send(message)
        resumed: list[str] = value
        return resumed

    async def stop(self) -> None:
        """Ask the child to stop its tasks (the next start resumes them) and exit."""
        self._stopping = True
        proc, outbox = self.proc, self._outbox
        if proc is None and self._reader is not None and not self._reader.done():
            # between a dead child and the next: no other is started (one starting is killed)
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            proc, outbox = self.proc, self._outbox
        if proc is None or outbox is None:
            return
        outbox.send(("stop",))
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                await proc.wait()
        except TimeoutError:
            log.warning("the executor process did not stop in time: killing it", pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        outbox.writer.close()

    async def _read(self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process) -> None:
        try:
            while True:
                for message in await read_frame(reader):
                    try:
                        self._handle(message)
                    except Exception:  # one message's handler (a hub listener) must not stop the rest
                        log.exception("a message from the executor process failed", kind=str(message[0]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("the executor process's message could not be read")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = await proc.wait()
        self.proc, self._outbox = None, None
        self._calls_lost()
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(ExecutorUnavailable("the executor process stopped; try again"))
        self._replies.clear()
        if self._stopping:
            return
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

    def _handle(self, message: Message) -> None:
        kind = message[0]
        if kind == "events":
            self.store.hub.publish(message[1])
        elif kind == "ans":
            self.answers.relay(*message[1:])
        elif kind == "obs":
            _, method, fields = message
            key = (str(fields.get("model")), str(fields.get("kind")))
            if method == "call_started":
                self._open_calls.setdefault(key, []).append(asyncio.get_running_loop().time())
            elif self._open_calls.get(key):
                self._open_calls[key].pop(0)
            self._observe(method, fields)
        elif kind in ("ok", "error"):
            fut = self._replies.pop(message[1], None)
            if fut is not None and not fut.done():
                if kind == "ok":
                    fut.set_result(message[2])
                else:
                    fut.set_exception(_error(message[2], message[3]))

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

    # the routes' surface ----------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if self._outbox is None:
            if message[0] == "dispatch":
                self._held.append(message)
            return
        self._outbox.send(message)

    async def _call(self, op: str, task_id: str) -> Any:
        if self._outbox is None:
            raise ExecutorUnavailable("the executor process is restarting; try again")
        self._next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = fut
        self._outbox.send((op, self._next_id, task_id))
        return await fut

    async def dispatch(self, task_id: str, *, priority: int) -> None:  # noqa: ARG002 (the queue backend uses it)
        """Start a task the API has just stored; returns at once."""
        self._send(("dispatch", task_id))

    async def cancel(self, task_id: str) -> None:
        await self._call("cancel", task_id)

    async def approve(self, task_id: str) -> None:
        await self._call("approve", task_id)

    async def wake(self, task_id: str) -> None:
        """The child's store does not see this process's events on SQLite: tell it."""
        self._send(("wake", task_id))


def _error(name: str, message: str) -> Exception:
    """The child's error as the routes know it (NotFound, Conflict ...)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, CompoundError):
        with contextlib.suppress(TypeError):
            return cls(message)
    return ExecutorUnavailable(f"the executor failed: {name}: {message}")


__all__ = ["ProcessExecutor", "frame", "read_frame"]
