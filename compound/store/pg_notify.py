"""PostgreSQL LISTEN/NOTIFY, narrow: `publish` a payload on a channel, a `Listener`
calls back on it in every process that listens, a `Notifier` sends from synchronous
code. The typed signals travel over it as signals/postgres.py says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import make_url, text
from sqlalchemy.engine import Connection, Engine

from compound.core.logging import get_logger
from compound.store.outage import outage_as_error

log = get_logger("compound.store.pg_notify")

CANCEL = "compound_cancel"  # payload: a task id
SLOT_FREE = "compound_slot_free"  # payload: a model name
# payload: a task id (enqueued; sent on DBOS's system database, in the enqueue's
# transaction), or "" (a slot freed or tasks resumed; sent on the store's database)
QUEUE_WAKE = "compound_queue_wake"
# Queue mode's streamed answers (executor/answers.py): an API process with a door's
# client listening to a task says "+<task id>" (and "-<task id>" when the last one
# leaves); the worker running it NOTIFYs the pieces as JSON {"op", "t", "a", "x"}.
ANSWER_WANT = "compound_answer_want"
ANSWER = "compound_answer"
# payload: "<origin>:<task id>:<first seq>:<last seq>", sent by the PostgreSQL store in
# the transaction of each write that appended events (delivered when it commits)
EVENTS = "compound_events"


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL of the store as a URL psycopg connects with (options kept)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def publish(engine: Engine, channel: str, payload: str) -> None:
    """NOTIFY every listener (delivered when this short transaction commits);
    DatabaseUnavailable when the database cannot be reached."""
    with outage_as_error(), engine.begin() as conn:
        notify(conn, channel, payload)


def notify(conn: Connection, channel: str, payload: str) -> None:
    """NOTIFY inside the caller's transaction: delivered when it commits, never without it."""
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


class Listener:
    """One connection LISTENing on some channels, calling `handlers[channel](payload)` on
    this event loop; it reconnects after a lost connection (signals sent meanwhile are
    lost, so every user also has a slower fallback: the store flag, a retry timer, the
    store's catch-up). `on_state` hears the LISTEN session's backend pid each time it is
    listening, and None each time its connection is lost."""

    def __init__(self, url: str, handlers: Mapping[str, Callable[[str], Any]], *,
                 on_state: Callable[[int | None], None] | None = None) -> None:
        self.url = libpq_url(url)
        self.handlers = dict(handlers)
        self.on_state = on_state
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self, *, wait: bool = True) -> None:
        """Start listening; `wait`: until the first LISTEN is in place (30 s at most)."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        if wait:
            await asyncio.wait_for(self.ready.wait(), timeout=30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        import psycopg

        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    for channel in self.handlers:
                        await conn.execute(f'LISTEN "{channel}"')
                    self.ready.set()
                    if self.on_state is not None:
                        self.on_state(conn.info.backend_pid)
                    delay = 0.1
                    async for note in conn.notifies():
                        handler = self.handlers.get(note.channel)
                        if handler is None:
                            continue
                        try:
                            handler(note.payload)
                        except Exception:  # one bad handler must not stop the others
                            log.exception("notification handler failed", channel=note.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection lost; reconnecting", error=type(exc).__name__)
                if self.on_state is not None:
                    self.on_state(None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class Notifier:
    """NOTIFYs asked for from synchronous code (a callback), sent in order on one async
    connection: those asked in one turn of the loop go in one round trip. A NOTIFY that
    cannot be sent (the connection is lost) is dropped, logged, and the next goes on a
    new connection: every user of these signals has a fallback."""

    BATCH = 100

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self._pending: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            if self._pending:  # what was asked for before the stop goes out
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        while self._pending and not self._task.done():
                            await asyncio.sleep(0.01)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def send(self, channel: str, payload: str) -> None:
        self._pending.append((channel, payload))
        self._wake.set()

    async def _run(self) -> None:
        import psycopg

        conn: Any = None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch, self._pending = self._pending[: self.BATCH], self._pending[self.BATCH:]
                    try:
                        if conn is None or conn.closed:
                            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                        sql = "SELECT " + ", ".join("pg_notify(%s, %s)" for _ in batch)
                        await conn.execute(sql, [v for pair in batch for v in pair])
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("notifications not sent", count=len(batch), error=type(exc).__name__)
                        if conn is not None:
                            await conn.close()
                        conn = None
        finally:
            if conn is not None:
                await conn.close()
