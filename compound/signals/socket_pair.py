"""Signals over the child process's socket pair (executor/process.py, child.py): frames
of pickled messages, those published in one turn of the loop as one frame.

The wire messages, one per signal (signals/bus.py):

  Events(events)            ("events", [Event ...])
  Dispatch(task_id)         ("dispatch", task_id)
  Cancel(task_id)           ("cancel", task_id)
  Wake(task_id)             ("wake", task_id)
  Listen(task_id, wanted)   ("listen" | "unlisten", task_id)
  Answer(op, t, a, text)    ("ans", op, task_id, attempt, text)
  Observation(m, fields)    ("obs", method, fields)
  Stop()                    ("stop",)

The start-up handshake (hello, started, failed) is the process host's own, before any
signal (`frame`, `read_frame`)."""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Sequence
from typing import Any

from compound.signals.bus import (
    Answer,
    Cancel,
    Dispatch,
    Events,
    Listen,
    Observation,
    Signal,
    Stop,
    Subscribers,
    Wake,
)

Message = tuple[Any, ...]
_HEADER = struct.Struct("!I")


def frame(messages: Sequence[Message]) -> bytes:
    body = pickle.dumps(list(messages), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[Message]:
    """The next frame's messages; IncompleteReadError at the end of the stream."""
    size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
    messages: list[Message] = pickle.loads(await reader.readexactly(size))
    return messages


def encode(signal: Signal) -> Message:
    match signal:
        case Events(events):
            return ("events", list(events))
        case Dispatch(task_id):
            return ("dispatch", task_id)
        case Cancel(task_id):
            return ("cancel", task_id)
        case Wake(task_id):
            return ("wake", task_id)
        case Listen(task_id, wanted):
            return ("listen" if wanted else "unlisten", task_id)
        case Answer(op, task_id, attempt, text):
            return ("ans", op, task_id, attempt, text)
        case Observation(method, fields):
            return ("obs", method, fields)
        case Stop():
            return ("stop",)
    raise TypeError(f"no socket message for {signal!r}")


def decode(message: Message) -> Signal:
    kind = message[0]
    if kind == "events":
        return Events(message[1])
    if kind == "dispatch":
        return Dispatch(message[1])
    if kind == "cancel":
        return Cancel(message[1])
    if kind == "wake":
        return Wake(message[1])
    if kind in ("listen", "unlisten"):
        return Listen(message[1], kind == "listen")
    if kind == "ans":
        return Answer(*message[1:])
    if kind == "obs":
        return Observation(message[1], message[2])
    if kind == "stop":
        return Stop()
    raise ValueError(f"unknown socket message {kind!r}")


class SocketSignals(Subscribers):
    """One side of the socket pair. `serve(reader, writer)` attaches a connection and
    delivers what it reads until the stream ends; a signal published while none is
    attached is kept for the next connection when its kind is in `hold`, else dropped."""

    def __init__(self, *, hold: Sequence[type] = ()) -> None:
        super().__init__()
        self._hold = tuple(hold)
        self._held: list[Message] = []
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[Message] = []

    @property
    def attached(self) -> bool:
        return self._writer is not None

    def publish(self, signal: Signal) -> None:
        message = encode(signal)
        if self._writer is None:
            if isinstance(signal, self._hold):
                self._held.append(message)
            return
        if self._writer.is_closing():
            return
        self._pending.append(message)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    async def send(self, signal: Signal) -> None:
        self.publish(signal)

    def flush(self) -> None:
        """Write what was published this turn as one frame."""
        if self._pending and self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame(self._pending))
        self._pending = []

    def attach(self, writer: asyncio.StreamWriter) -> None:
        """Publish on this connection from now on (the held signals go first)."""
        self._writer = writer
        held, self._held = self._held, []
        for message in held:
            self.publish(decode(message))

    def detach(self) -> None:
        self._writer, self._pending = None, []

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Deliver every signal read until the stream ends (returns); a frame that
        cannot be read raises."""
        try:
            while True:
                for message in await read_frame(reader):
                    self.deliver(decode(message))
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def start(self) -> None:
        return

    async def stop(self) -> None:
        self.flush()


__all__ = ["Message", "SocketSignals", "decode", "encode", "frame", "read_frame"]
