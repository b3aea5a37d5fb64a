"""Signals over PostgreSQL LISTEN/NOTIFY (store/pg_notify.py), between the API
processes and the workers of queue mode, and between the PostgreSQL stores of every
process. One channel a kind:

  Committed(o, t, lo, hi)   compound_events         "<origin>:<task id>:<lo>:<hi>"
  Cancel(task_id)           compound_cancel         task id
  QueueWake(task_id)        compound_queue_wake     task id, or ""
  SlotFree(model)           compound_slot_free      model name
  Listen(task_id, wanted)   compound_answer_want    "+<task id>" | "-<task id>"
  Answer(op, t, a, text)    compound_answer         JSON {"op", "t", "a", "x"}, text cut in
                                                    pieces of CHUNK characters

Committed is the store's own: store/postgres.py sends its `payloads` inside the write's
transaction (delivered exactly when the write commits, never without it) and hears
them through a PgSignals of its own. Wake is not sent: the decision's events reach the
worker holding the call as every event does, Committed. A process hears the kinds it
subscribed to before `start`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from compound.core.logging import get_logger
from compound.signals.bus import Answer, Cancel, Committed, Listen, QueueWake, Signal, SlotFree, Subscribers, Wake
from compound.store import pg_notify

log = get_logger("compound.signals.postgres")

# Characters of text per NOTIFY: a payload holds at most 8,000 bytes, and a character
# may take six in JSON (a control character's escape).
CHUNK = 1000

CHANNELS: dict[type, str] = {Committed: pg_notify.EVENTS, Cancel: pg_notify.CANCEL, QueueWake: pg_notify.QUEUE_WAKE,
                             SlotFree: pg_notify.SLOT_FREE, Listen: pg_notify.ANSWER_WANT,
                             Answer: pg_notify.ANSWER}


def payloads(signal: Signal) -> list[tuple[str, str]]:
    """The (channel, payload) NOTIFYs of one signal, in order."""
    match signal:
        case Committed(origin, task_id, first, last):
            return [(pg_notify.EVENTS, f"{origin}:{task_id}:{first}:{last}")]
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
        if kind is Committed:
            origin, task_id, first, last = payload.rsplit(":", 3)
            return Committed(origin, task_id, int(first), int(last))
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

    def __init__(self, url: str, *, engine: Callable[[], Any] | None = None,
                 on_state: Callable[[int | None], None] | None = None) -> None:
        super().__init__()
        self.url = url
        self.engine = engine
        self.on_state = on_state  # the listener's state (pg_notify.Listener)
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

    async def start(self, *, wait: bool = True) -> None:
        """`wait`: until the LISTEN is in place (else `on_state` tells when it is)."""
        self._notifier = pg_notify.Notifier(self.url)
        self._notifier.start()
        heard = {CHANNELS[k]: self._handler(k) for k in self.handlers if k in CHANNELS}
        if heard:
            self._listener = pg_notify.Listener(self.url, heard, on_state=self.on_state)
            await self._listener.start(wait=wait)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._notifier is not None:
            await self._notifier.stop()
            self._notifier = None


__all__ = ["CHUNK", "PgSignals", "parse", "payloads"]
