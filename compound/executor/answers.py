"""Streamed synthesis answers, fanned out: any number of listeners per task (the front
doors' streams), each told every piece of text as the synthesis call streams it.

A synthesis call that is retried or falls back to the next model streams again from
its start: every piece carries its attempt's number, and a new number means the text
starts over. What a listener may forward to a client that can only append is its own
business (compound.api.doors.engine.AnswerText)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from compound.core.logging import get_logger
from compound.signals.bus import Answer, Listen, Signal

log = get_logger("compound.executor")


@dataclass(frozen=True, slots=True)
class AnswerPiece:
    attempt: int  # the synthesis attempt (1, 2 ...) this text belongs to
    text: str


Listener = Callable[[AnswerPiece], object]


class AnswerStreams:
    """Per task: its listeners, and the text of the synthesis attempt streaming now (so
    a listener that comes in mid-answer first gets the attempt's text so far as one
    piece). A listener is called on the event loop it listened from, synchronously, in
    order (through that loop's call_soon_threadsafe when called from another loop): it
    must be cheap (put on a queue) and must not raise."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[tuple[Listener, asyncio.AbstractEventLoop | None]]] = {}
        self._current: dict[str, tuple[int, list[str]]] = {}
        self._lock = threading.Lock()  # a listener's catch-up and the next piece never cross

    @contextmanager
    def listen(self, task_id: str, listener: Listener) -> Iterator[None]:
        entry = (listener, asyncio.events._get_running_loop())
        with self._lock:
            current = self._current.get(task_id)
            if current is not None and current[1]:
                listener(AnswerPiece(current[0], "".join(current[1])))
            self._listeners.setdefault(task_id, []).append(entry)
        try:
            yield
        finally:
            with self._lock:
                listeners = self._listeners.get(task_id, [])
                if entry in listeners:
                    listeners.remove(entry)
                if not listeners:
                    self._listeners.pop(task_id, None)

    def listening(self, task_id: str) -> int:
        """How many listeners the task has now."""
        return len(self._listeners.get(task_id, ()))

    def begin(self, task_id: str, attempt: int) -> None:
        """A synthesis attempt starts streaming (its text starts over)."""
        with self._lock:
            self._current[task_id] = (attempt, [])

    def delta(self, task_id: str, attempt: int, text: str) -> None:
        piece = AnswerPiece(attempt, text)
        here = asyncio.events._get_running_loop()
        with self._lock:
            current = self._current.get(task_id)
            if current is not None and current[0] == attempt:
                current[1].append(text)
            listeners = list(self._listeners.get(task_id, ()))
            for listener, loop in listeners:
                try:
                    if loop is None or loop is here:
                        listener(piece)
                    else:
                        loop.call_soon_threadsafe(listener, piece)
                except Exception:  # a listener (or its closed loop) must never break the call
                    log.exception("answer listener failed", task_id=task_id)

    def end(self, task_id: str, attempt: int) -> None:
        """The attempt ended (answered or failed): nothing of it is kept."""
        with self._lock:
            current = self._current.get(task_id)
            if current is not None and current[0] == attempt:
                del self._current[task_id]


# Across processes (executor/remote.py): the process that runs the task streams its
# synthesis only while a process with listeners wants it (a Listen signal), and
# publishes the pieces as Answer signals (op one of begin, delta, end).
Publish = Callable[[Signal], None]


class ForwardedAnswers(AnswerStreams):
    """The running side: answers streamed here and published for the tasks some other
    process wants. Several may want one task (API processes in queue mode): each want
    counts, each unwant uncounts."""

    def __init__(self, publish: Publish) -> None:
        super().__init__()
        self._wanted: dict[str, int] = {}
        self._send = publish

    def listening(self, task_id: str) -> int:
        return super().listening(task_id) + (task_id in self._wanted)

    def want(self, task_id: str, wanted: bool) -> None:
        n = self._wanted.get(task_id, 0) + (1 if wanted else -1)
        if n <= 0:
            self._wanted.pop(task_id, None)
            return
        self._wanted[task_id] = n
        if wanted and n == 1:
            with self._lock:  # mid-answer: what the attempt has said so far, as one piece
                current = self._current.get(task_id)
                if current is not None:
                    self._send(Answer("begin", task_id, current[0]))
                    if current[1]:
                        self._send(Answer("delta", task_id, current[0], "".join(current[1])))

    def begin(self, task_id: str, attempt: int) -> None:
        super().begin(task_id, attempt)
        if task_id in self._wanted:
            self._send(Answer("begin", task_id, attempt))

    def delta(self, task_id: str, attempt: int, text: str) -> None:
        super().delta(task_id, attempt, text)
        if task_id in self._wanted:
            self._send(Answer("delta", task_id, attempt, text))

    def end(self, task_id: str, attempt: int) -> None:
        super().end(task_id, attempt)
        if task_id in self._wanted:
            self._send(Answer("end", task_id, attempt))


class RemoteAnswers(AnswerStreams):
    """The listening side: listeners here, pieces relayed from the process that runs the
    task. The first listener of a task tells that side (Listen), and the last one
    leaving tells it too (Listen, wanted False)."""

    def __init__(self, publish: Publish) -> None:
        super().__init__()
        self._send = publish

    @contextmanager
    def listen(self, task_id: str, listener: Listener) -> Iterator[None]:
        first = self.listening(task_id) == 0
        with super().listen(task_id, listener):
            if first:
                self._send(Listen(task_id))
            try:
                yield
            finally:
                if self.listening(task_id) == 1:
                    self._send(Listen(task_id, wanted=False))
                    with self._lock:
                        self._current.pop(task_id, None)

    def wanted(self) -> list[str]:
        """The tasks listened to here now (to tell a new executor process)."""
        with self._lock:
            return list(self._listeners)

    def relay(self, piece: Answer) -> None:
        """A piece from the running side; none is kept for a task nobody here listens
        to (pieces reach every API process in queue mode)."""
        if not self.listening(piece.task_id):
            return
        if piece.op == "begin":
            self.begin(piece.task_id, piece.attempt)
        elif piece.op == "delta":
            self.delta(piece.task_id, piece.attempt, piece.text)
        else:
            self.end(piece.task_id, piece.attempt)
