"""The executor's process: `python -m compound.executor.child FD PARENT_PID`, started by
executor/process.py with one end of a socket pair as FD.

It reads a hello (the settings, and what the server wants relayed), opens its own
store handle and SDK clients, resumes every unfinished task, answers ("started",
[resumed ids]) and then serves the server's signals (signals/socket_pair.py) until
Stop or the end of the socket:

  from the server                     to the server
  Dispatch(task_id)                   Events  SQLite only: its commits
  Cancel(task_id)  its request is     Answer  a piece of a streamed answer
    in the store                      Observation  a model call's (metrics)
  Listen(task_id, wanted)
  Wake(task_id)  a held tool call's
    decision is in the store
  Stop()

Ctrl-C in a terminal,
`kill %1` and systemd's stop signal the whole process group (or control group): they
are meant for the server, so the child ignores SIGINT and SIGTERM and stops when the
server says so, in order (a clean stop, not a death to report), or when the server's
process dies (the parent-death signal, else the socket's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from compound.core.logging import get_logger
from compound.executor.answers import ForwardedAnswers
from compound.signals.bus import Cancel, Dispatch, Events, Listen, Observation, Stop, Wake
from compound.signals.socket_pair import SocketSignals, frame, read_frame

log = get_logger("compound.executor")


class ForwardedObservations:
    """A CallObserver that relays each observation to the server's observers (metrics)."""

    def __init__(self, signals: SocketSignals) -> None:
        self._signals = signals

    def call_started(self, **fields: Any) -> None:
        self._signals.publish(Observation("call_started", fields))

    def call_finished(self, **fields: Any) -> None:
        self._signals.publish(Observation("call_finished", fields))


def die_with(parent: int) -> None:
    """Be killed when the server's process dies (Linux), even by kill -9: a task must not
    run on in an orphan while the next server resumes it."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)


async def serve(fd: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    hello: dict[str, Any] = (await read_frame(reader))[0][1]
    settings = hello["settings"]
    from compound.core.logging import configure_logging

    configure_logging(hello.get("log_level", settings.log_level), settings.log_json)  # the server's (-v)
    signals = SocketSignals()
    signals.attach(writer)
    try:
        from compound.executor.service import Executor
        from compound.llm import build_client
        from compound.store import open_store, store_options

        store = open_store(settings.database_url, **store_options(settings))
        await store.open()
    except Exception as exc:
        writer.write(frame([("failed", f"{type(exc).__name__}: {exc}")]))
        await writer.drain()
        return 1
    client = build_client(settings)
    executor: Executor | None = None
    try:
        await store.write_from_here()
        await client.warm()
        answers = ForwardedAnswers(signals.publish)
        observers = [ForwardedObservations(signals)] if hello["observe"] else []
        executor = Executor(settings=settings, store=store, client=client, observers=observers,
                            stream_answers=hello["stream_answers"], answers=answers)
        if hello["relay_events"]:
            store.hub.listen(lambda events: signals.publish(Events(list(events))))
        resumed = await executor.start()
        writer.write(frame([("started", resumed)]))
        from compound.core.heap import settle_heap

        settle_heap()
        await _serve_signals(reader, executor, answers, signals)
        return 0
    except Exception as exc:
        log.exception("the executor process failed")
        signals.flush()
        writer.write(frame([("failed", f"{type(exc).__name__}: {exc}")]))
        return 1
    finally:
        if executor is not None:
            await executor.stop()
        await client.aclose()
        await store.close()
        signals.flush()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


async def _serve_signals(reader: asyncio.StreamReader, executor: Any, answers: ForwardedAnswers,
                         signals: SocketSignals) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    signals.subscribe(Dispatch, lambda d: executor.submit(d.task_id))
    signals.subscribe(Cancel, lambda c: executor.cancel_heard(c.task_id))
    signals.subscribe(Wake, lambda w: executor.workflow.steps.approvals.wake(w.task_id))
    signals.subscribe(Listen, lambda li: answers.want(li.task_id, li.wanted))
    signals.subscribe(Stop, lambda _: stopped.set())
    serving = loop.create_task(signals.serve(reader))
    await asyncio.wait([serving, loop.create_task(stopped.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not stopped.is_set():
        # The server died (its socket closed without a stop): go as it went, booking
        # nothing, so the next server finds the calls in flight and books them lost, as
        # the parent-death signal would have (it can arrive after the socket closes).
        os._exit(1)
    serving.cancel()


def main(argv: list[str]) -> int:
    fd, parent = int(argv[1]), int(argv[2])
    for sig in (signal.SIGINT, signal.SIGTERM):  # the server's to handle (module docstring)
        signal.signal(sig, signal.SIG_IGN)
    die_with(parent)
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - a bare install
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
