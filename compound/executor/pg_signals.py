"""Signals over PostgreSQL LISTEN/NOTIFY (store/pg_notify.py), between the API
processes and the workers of queue mode. One channel a kind, the payloads as before:

  Cancel(task_id)           compound_cancel         task id
  QueueWake(task_id)        compound_queue_wake     task id, or ""
  SlotFree(model)           compound_slot_free      model name
  Listen(task_id, wanted)   compound_answer_want    "+<task id>" | "-<task id>"
  Answer(op, t, a, text)    compound_answer         JSON {"op", "t", "a", "x"}, text cut in
                                                    pieces of CHUNK characters

Wake is not sent: the decision's events reach the worker holding the call through the
store's own NOTIFY (compound_events, store/postgres.py), as every event does; Events
are that NOTIFY's, heard by the store's hub, never by a subscriber here. A process
hears the kinds it subscribed to before `start`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from compound.core.logging import get_logger
from compound.executor.signals import Answer, Cancel, Listen, QueueWake, Signal, SlotFree, Subscribers, Wake
from compound.store import pg_notify

log = get_logger("compound.executor.pg_signals")

# Characters of text per NOTIFY: a payload holds at most 8,000 bytes, and a character
# may take six in JSON (a control character's escape).
CHUNK = 1000

CHANNELS: dict[type, str] = {Cancel: pg_notify.CANCEL, QueueWake: pg_notify.QUEUE_WAKE,
                             SlotFree: pg_notify.SLOT_FREE, Listen: pg_notify.ANSWER_WANT,
                             Answer: pg_notify.ANSWER}


def payloads(signal: Signal) -> list[tuple[str, str]]:
    """The (channel, payload) NOTIFYs of one signal, in order."""
    match signal:
        case Cancel(task_id) | QueueWake(task_id):
            return [(CHANNELS[type(signal)], task_id)]
        case SlotFree(model):
            return [(pg_notify.SLOT_FREE, model)]
        case Listen(task_id, wanted):
            return [(pg_notify.ANSWER_WANT, ("+" if wanted else "-") + task_id)]
        case Answer(op, task_id, attempt, text):
            parts = [text[i: i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
            return [(pg_notify.ANSWER, json.dumps({"op": op, "t": task_id, "a": attempt, "x": part},
                                                  ensure_ascii=False)) for part in parts]
        case Wake():
            return []
    raise TypeError(f"no NOTIFY for {signal!r}")


def parse(kind: type, payload: str) -> Signal | None:
    """The signal of a payload heard on `kind`'s channel; None when it cannot be read."""
    try:
        if kind is Cancel:
            return Cancel(payload)
        if kind is QueueWake:
            return QueueWake(payload)
        if kind is SlotFree:
            return SlotFree(payload)
        if kind is Listen:
            return Listen(payload[1:], payload[0] == "+") if len(payload) > 1 and payload[0] in "+-" else None
        piece = json.loads(payload)
        return Answer(str(piece["op"]), str(piece["t"]), int(piece["a"]), str(piece["x"]))
    except (ValueError, KeyError, TypeError):
        log.warning("a signal could not be read", channel=CHANNELS.get(kind), payload=payload[:200])
        return None


class PgSignals(Subscribers):
    """LISTEN on one database for the kinds subscribed to; NOTIFY there. `publish` goes
    on one connection in the background, in order (dropped, logged, when the database
    is away); `send` commits its NOTIFY on `engine()` (the store's SQLAlchemy engine)
    before returning."""

    def __init__(self, url: str, *, engine: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.url = url
        self.engine = engine
        self._notifier: pg_notify.Notifier | None = None
        self._listener: pg_notify.Listener | None = None

    def publish(self, signal: Signal) -> None:
        if self._notifier is None:  # not started, or stopped: nobody is there to hear it
            return
        for channel, payload in payloads(signal):
            self._notifier.send(channel, payload)

    async def send(self, signal: Signal) -> None:
        if self.engine is None:
            raise RuntimeError("PgSignals.send needs the engine it commits its NOTIFY on")
        engine = self.engine()
        for channel, payload in payloads(signal):
            await asyncio.to_thread(pg_notify.publish, engine, channel, payload)

    def _handler(self, kind: type) -> Any:
        def heard(payload: str) -> None:
            signal = parse(kind, payload)
            if signal is not None:
                self.deliver(signal)

        return heard

    async def start(self) -> None:
        self._notifier = pg_notify.Notifier(self.url)
        self._notifier.start()
        # Events are the store's own NOTIFY (its hub hears them): no channel here.
        heard = {CHANNELS[k]: self._handler(k) for k in self.handlers if k in CHANNELS}
        if heard:
            self._listener = pg_notify.Listener(self.url, heard)
            await self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._notifier is not None:
            await self._notifier.stop()
            self._notifier = None


__all__ = ["CHUNK", "PgSignals", "parse", "payloads"]
