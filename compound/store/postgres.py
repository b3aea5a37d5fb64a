"""The RunStore on PostgreSQL: psycopg's async pool, and the signal bus across processes.

Each write is one transaction on a pooled connection; a write that appended events
sends, in that transaction (delivered at commit), the `Committed` signal of each task
it wrote to: the range of event seqs, and this store's origin (signals/postgres.py). A
PgSignals of the store's own hears the others' and, for a task someone here subscribes
to, reads the new events and publishes them to the hub (a write of this process is
published directly, and its own signal ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncCursor
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import Engine

from compound.core.logging import get_logger
from compound.signals.bus import Committed
from compound.signals.postgres import PgSignals, payloads
from compound.store import ops, outage, statements
from compound.store.opsstore import OpsRunStore
from compound.store.sqlrun import ReadQueries
from compound.store.values import Event

log = get_logger("compound.store")
# How long an operation waits for a pooled connection before it answers that the
# database is unavailable (psycopg's default, 30 s, would hold every request that long
# while the server restarts).
POOL_WAIT_S = 5.0
SQL: dict[str, str] = statements.compiled(statements.POSTGRES)  # the driver's text of each statement


class PostgresDialect:
    sql = SQL

    @staticmethod
    def now() -> datetime:
        return naive_utc(datetime.now(UTC))

    @staticmethod
    def json(value: Any) -> Json:
        return Json(value)

    @staticmethod
    def loads(value: Any) -> Any:
        if isinstance(value, str | bytes):
            import json

            return json.loads(value)
        return value

    @staticmethod
    def dt(value: Any) -> datetime | None:
        return ops.parse_dt(value)

    @staticmethod
    def at(value: datetime) -> datetime:
        return naive_utc(value)


def naive_utc(value: datetime) -> datetime:
    """Timestamps are stored as naive UTC (`timestamp without time zone`)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


D = PostgresDialect()
Factory = Callable[[], ops.Op]


async def run(cur: AsyncCursor[Any], op: ops.Op, events: list[Event]) -> Any:
    """Drive one operation on a cursor (inside the caller's transaction)."""
    try:
        req = next(op)
        while True:
            if isinstance(req, Event):
                events.append(req)
                req = op.send(None)
                continue
            mode, name, params = req
            sql = SQL[name]
            if mode == "many":
                await cur.executemany(sql, params)
                got: Any = None
            else:
                await cur.execute(sql, params)
                got = (await cur.fetchone()) if mode == "one" else (await cur.fetchall()) if mode == "all" else None
            req = op.send(got)
    except StopIteration as stop:
        return stop.value


def conninfo(url: str) -> str:
    """A libpq URI from a SQLAlchemy-style URL (postgresql+psycopg://...)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


class PostgresRunStore(OpsRunStore):
    dialect = D
    lock_users = True  # one user's reservations serialized across processes (daily budgets)

    def __init__(self, url: str, *, pool_size: int = 10, listen: bool = True) -> None:
        super().__init__(url)
        self.pool = AsyncConnectionPool(conninfo(url), min_size=1, max_size=pool_size, open=False,
                                        timeout=POOL_WAIT_S)
        self.listen = listen
        self.origin = uuid.uuid4().hex[:12]  # this store's signals, ignored by its own listener
        self.signals: PgSignals | None = None  # hears the other stores' Committed (when `listen`)
        self._heard: asyncio.Queue[Committed | None] = asyncio.Queue()  # None: catch up
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._lost = False
        self.listener_pid: int | None = None  # the LISTEN session's backend (diagnostics, tests)
        self._engine: Engine | None = None
        self._pg = statements.POSTGRES.dialect()  # the listing and cost reads are compiled per call
        self._opened = False
        self.queries = ReadQueries(statements.POSTGRES)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from compound.store.db import make_engine

            self._engine = make_engine(self.url)
        return self._engine

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        from compound.store.db import create_all

        await asyncio.to_thread(create_all, self.engine)
        self.hub.home = asyncio.get_running_loop()
        await self.pool.open(wait=True)
        if self.listen:
            self._reader = asyncio.get_running_loop().create_task(self._read_heard())
            self.signals = PgSignals(self.url, on_state=self._listener_state)
            self.signals.subscribe(Committed, self._heard.put_nowait)
            await self.signals.start(wait=False)
            await self._listening.wait()  # listening, or its first attempt failed (it keeps trying)

    async def close(self) -> None:
        if self.signals is not None:
            await self.signals.stop()
            self.signals = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self.pool.close()
        if self._engine is not None:
            self._engine.dispose()

    def _listener_state(self, pid: int | None) -> None:
        """The listener is listening (its session's pid) or lost its connection (None):
        once it listens again, what was committed meanwhile is caught up."""
        if pid is None:
            self._lost = True
        else:
            self.listener_pid = pid
            if self._lost:
                self._lost = False
                self._heard.put_nowait(None)
        self._listening.set()

    async def _read_heard(self) -> None:
        """The signals heard, in order: each read and published, or a catch-up. A read
        that fails (the database away) is followed by a catch-up."""
        while True:
            heard = await self._heard.get()
            try:
                if heard is None:
                    await self._catch_up()
                else:
                    await self._notified(heard)
            except Exception as exc:
                log.warning("could not read the events of a commit heard; catching up", error=type(exc).__name__)
                await asyncio.sleep(0.5)
                self._heard.put_nowait(None)

    async def _catch_up(self) -> None:
        """Once LISTENing again: the notifications sent while nobody listened are lost,
        so publish what each task watched here committed meanwhile (a stream, a wait or
        a cached snapshot would otherwise hear of it only at the task's next event)."""
        for task_id, last in self.hub.watched_since().items():
            try:
                if last is None:  # marks "something changed": the newest event will do
                    last = max(0, (await self.head(task_id)).event_seq - 1)
                self.hub.publish(await self.events_after(task_id, last))
            except Exception as exc:  # the task is gone, or the database again: next one
                log.warning("could not catch up a task's events", task_id=task_id, error=type(exc).__name__)

    async def _notified(self, c: Committed) -> None:
        if c.origin == self.origin or not self.hub.watched(c.task_id):
            return
        self.hub.publish(await self.events_after(c.task_id, c.first - 1, limit=c.last - c.first + 1))

    # running operations --------------------------------------------------------------

    async def _write(self, factory: Factory) -> Any:
        self.stats.writes += 1
        return await self._on_pool(self._write_once, factory)

    async def _write_once(self, factory: Factory, sent: list[bool]) -> Any:
        events: list[Event] = []
        async with self.pool.connection() as conn:
            async with conn.transaction(), conn.cursor() as cur:
                value = await run(cur, factory(), events)
                for task_id, (lo, hi) in _ranges(events).items():
                    for channel, payload in payloads(Committed(self.origin, task_id, lo, hi)):
                        await cur.execute("SELECT pg_notify(%(c)s, %(p)s)", {"c": channel, "p": payload})
                sent[0] = True  # the COMMIT goes out as the block ends
            self.stats.commits += 1
        self.hub.publish(events)
        return value

    async def _read(self, factory: Factory) -> Any:
        self.stats.reads += 1
        return await self._on_pool(self._read_once, factory)

    async def _read_once(self, factory: Factory, _sent: list[bool]) -> Any:
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            return await run(cur, factory(), [])

    async def _core(self, stmt: Any) -> list[Any]:
        """A SQLAlchemy Core read compiled for psycopg, run on the pool."""
        self.stats.reads += 1
        compiled = stmt.compile(dialect=self._pg)
        return list(await self._on_pool(self._core_once, compiled))

    async def _core_once(self, compiled: Any, _sent: list[bool]) -> Any:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(str(compiled), compiled.params)
            return await cur.fetchall()

    async def _on_pool(self, once: Callable[[Any, list[bool]], Awaitable[Any]], arg: Any) -> Any:
        """Run one transaction; a connection-level failure is DatabaseUnavailable. The
        pooled connections may have died while idle (a server restart, a terminated
        backend): the first such failure sweeps the pool's idle connections and tries
        once more on a fresh one, unless the COMMIT had gone out (then whether it
        applied is unknown, and the caller hears so)."""
        sent = [False]
        try:
            return await once(arg, sent)
        except Exception as exc:
            _cancelled_as(exc)
            err = outage.unavailable(exc)
            if err is None:
                raise
            if sent[0]:
                raise err from exc
            log.warning("store connection lost; retrying once on a fresh one", error=type(exc).__name__)
        with outage.outage_as_error():
            with contextlib.suppress(Exception):
                await self.pool.check()
            sent[0] = False
            try:
                return await once(arg, sent)
            except Exception as exc:
                _cancelled_as(exc)
                raise


def _cancelled_as(exc: Exception) -> None:
    """A task cancelled in the middle of a statement on a connection the server had
    closed hears the failed ROLLBACK's error in place of its cancellation: give the
    cancellation back, so the cancel is neither retried nor taken for an outage."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def _ranges(events: Sequence[Event]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for ev in events:
        lo, hi = out.get(ev.task_id, (ev.seq, ev.seq))
        out[ev.task_id] = (min(lo, ev.seq), max(hi, ev.seq))
    return out
