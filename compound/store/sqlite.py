"""The RunStore on SQLite: one writer that group-commits, readers off the loop.

Writes go to a queue; the writer thread takes every write waiting, runs them in one
transaction (group commit: one commit for a burst of transitions), then hands each
result back to the loop that awaits it and the events to the store's own loop. While
the executor's own process writes (executor/child.py), its loop is the writer
instead (`write_from_here()`): the writes of one turn commit at the turn's end, with
no hand-over to a thread and back. Reads run on a small thread pool, each
thread with its own connection (WAL: readers never wait for the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from compound.core.logging import get_logger
from compound.store import ops, statements
from compound.store.opsstore import OpsRunStore
from compound.store.sqlrun import ReadQueries
from compound.store.values import Event

log = get_logger("compound.store")
SQL: dict[str, str] = statements.compiled(statements.SQLITE)  # the driver's text of each statement


class SqliteDialect:
    sql = SQL

    @staticmethod
    def now() -> str:
        return sqlite_time(datetime.now(UTC))

    @staticmethod
    def json(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    @staticmethod
    def loads(value: Any) -> Any:
        if value.__class__ is str:
            # the columns' usual values, without the parser (a fresh list or dict each time)
            if value == "[]":
                return []
            if value == "null":
                return None
            if value == "{}":
                return {}
            return json.loads(value)
        return json.loads(value) if isinstance(value, bytes) else value

    @staticmethod
    def dt(value: Any) -> datetime | None:
        return ops.parse_dt(value)

    @staticmethod
    def at(value: datetime) -> str:
        return sqlite_time(value)


def sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME storage format (naive UTC), so every reader agrees."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


D = SqliteDialect()


def run(cur: sqlite3.Cursor, op: ops.Op, events: list[Event]) -> Any:
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
                cur.executemany(sql, params)
                got: Any = None
            else:
                cur.execute(sql, params)
                got = cur.fetchone() if mode == "one" else cur.fetchall() if mode == "all" else None
            req = op.send(got)
    except StopIteration as stop:
        return stop.value


def connect(path: str, *, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


Factory = Callable[[], ops.Op]
_STOP = object()


class _Writer:
    """The one writer: a thread that runs every queued write of a burst in one
    transaction. A failing write is retried alone so it fails alone."""

    MAX_BATCH = 512

    def __init__(self, store: SqliteRunStore, path: str, synchronous: str) -> None:
        self.store = store
        self.path = path
        self.synchronous = synchronous
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, name="compound-sqlite-writer", daemon=True)
        self.checkpointer = threading.Thread(target=self._checkpoints, name="compound-sqlite-checkpoint", daemon=True)
        self._stopped = threading.Event()
        self.ready = threading.Event()  # the writer's connection is open (or `error` says why not)
        self.error: sqlite3.Error | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread.start()
        self.checkpointer.start()

    def submit(self, factory: Factory) -> asyncio.Future[Any]:
        assert self.loop is not None, "the store is not open"
        # The caller's loop: the HTTP loop's routes, or the executor's on its thread.
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put((factory, fut))
        return fut

    def stop(self) -> None:
        self.queue.put(_STOP)
        self.thread.join()
        self._stopped.set()
        self.checkpointer.join()

    def _checkpoints(self) -> None:
        """Copy the WAL back into the database every 0.5 s while there are new commits
        (SQLite's PASSIVE checkpoint: it never blocks the writer or the readers)."""
        try:
            conn = connect(self.path, synchronous=self.synchronous)
        except sqlite3.Error:  # the writer reports the store as unavailable
            return
        seen = 0
        try:
            while not self._stopped.wait(0.5):
                if self.store.stats.commits != seen:
                    seen = self.store.stats.commits
                    with contextlib.suppress(sqlite3.OperationalError):  # busy: the next round does it
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def _main(self) -> None:
        try:
            conn = connect(self.path, synchronous=self.synchronous)
            # Checkpoints (which fsync) run on the checkpointer thread, never in a commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            self.error = exc
            return
        finally:
            self.ready.set()
        try:
            while True:
                batch = [self.queue.get()]
                while len(batch) < self.MAX_BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(b is _STOP for b in batch)
                work = [b for b in batch if b is not _STOP]
                if work:
                    assert self.loop is not None
                    commit(self.store, conn, work, home=self.loop)
                if stop:
                    return
        finally:
            conn.close()

Work = list[tuple[Factory, "asyncio.Future[Any]"]]


def commit(store: SqliteRunStore, conn: sqlite3.Connection, work: Work, *,
           home: asyncio.AbstractEventLoop) -> None:
    """Run a burst of writes in one transaction (a failing write is retried alone so it
    fails alone), then hand the results and events back."""
    events: list[Event] = []
    results: list[tuple[asyncio.Future[Any], bool, Any]] = []
    cur = conn.cursor()
    try:
        cur.execute("BEGIN IMMEDIATE")
        for factory, fut in work:
            results.append((fut, True, run(cur, factory(), events)))
        cur.execute("COMMIT")
        store.stats.commits += 1
    except Exception:
        cur.execute("ROLLBACK") if conn.in_transaction else None
        events, results = [], []
        for factory, fut in work:  # alone, each in its own transaction
            mine: list[Event] = []
            try:
                cur.execute("BEGIN IMMEDIATE")
                value = run(cur, factory(), mine)
                cur.execute("COMMIT")
                store.stats.commits += 1
                events.extend(mine)
                results.append((fut, True, value))
            except Exception as exc:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                results.append((fut, False, exc))
    finally:
        cur.close()
    hand_back(store, events, results, home=home)


def hand_back(store: SqliteRunStore, events: list[Event], results: list[tuple[asyncio.Future[Any], bool, Any]], *,
              home: asyncio.AbstractEventLoop) -> None:
    """The events to the store's own loop (the hub's home, where subscribers are), each
    result to the loop its writer awaits it on, in commit order per loop: at once when
    that is the loop running here (the writer on the executor's loop), else through the
    loop's call_soon_threadsafe."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {home: []}
    for r in results:
        by_loop.setdefault(r[0].get_loop(), []).append(r)
    here = asyncio.events._get_running_loop()
    for loop, mine in by_loop.items():
        if mine or (loop is home and events):  # a loop with nothing to hear is not woken
            if loop is here:
                store.delivered(events if loop is home else [], mine)
                continue
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody awaits
                loop.call_soon_threadsafe(store.delivered, events if loop is home else [], mine)


class _LoopWriter:
    """The one writer on an event loop's own thread (the executor's process, executor/child.py):
    the writes asked for in one turn of that loop commit together at its end, with no
    hand-over to another thread and back. Writes asked from other loops come in through
    call_soon_threadsafe. Once retired, every write goes to the writer thread again."""

    def __init__(self, store: SqliteRunStore, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop,
                 fallback: _Writer) -> None:
        self.store, self.conn, self.loop, self.fallback = store, conn, loop, fallback
        self.pending: Work = []
        self.retired = False

    def submit(self, factory: Factory) -> asyncio.Future[Any]:
        here = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = here.create_future()
        if here is self.loop:
            self._add(factory, fut)
        else:
            self.loop.call_soon_threadsafe(self._add, factory, fut)
        return fut

    def _add(self, factory: Factory, fut: asyncio.Future[Any]) -> None:
        if self.retired:
            self.fallback.queue.put((factory, fut))
            return
        self.pending.append((factory, fut))
        if len(self.pending) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        while self.pending:
            work, self.pending = self.pending[:_Writer.MAX_BATCH], self.pending[_Writer.MAX_BATCH:]
            assert self.store.hub.home is not None
            commit(self.store, self.conn, work, home=self.store.hub.home)

    def retire(self) -> None:
        """On its loop: commit what is pending, then leave every write to the thread."""
        self.flush()
        self.retired = True
        self.conn.close()


class SqliteRunStore(OpsRunStore):
    ordered_writes = True  # one writer thread, FIFO
    dialect = D
    lock_users = False  # SQLite serializes every write already

    def __init__(self, url: str, *, synchronous: str = "NORMAL", readers: int = 2) -> None:
        super().__init__(url)
        self.path = url.split("///", 1)[1] if "///" in url else ":memory:"
        self.synchronous = synchronous
        self._engine: Engine | None = None
        self._writer: _Writer | _LoopWriter | None = None
        self._thread_writer: _Writer | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="compound-sqlite-reader")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self.queries = ReadQueries(statements.SQLITE)

    @property
    def in_memory(self) -> bool:
        return self.path in ("", ":memory:") or "mode=memory" in self.path

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from compound.store.db import make_engine

            self._engine = make_engine(self.url, sqlite_synchronous=self.synchronous)
        return self._engine

    async def open(self) -> None:
        if self._writer is not None:
            return
        from sqlalchemy.exc import OperationalError

        from compound.store.db import StoreUnavailable, create_all

        try:
            await asyncio.to_thread(create_all, self.engine)
        except OperationalError as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc.orig}") from None
        writer = _Writer(self, self.path, self.synchronous)
        self.hub.home = asyncio.get_running_loop()
        writer.start(self.hub.home)
        await asyncio.to_thread(writer.ready.wait)
        if writer.error is not None:
            writer.stop()
            raise StoreUnavailable(f"cannot open {self.path} for writing: {writer.error}")
        self._writer = self._thread_writer = writer

    async def close(self) -> None:
        writer = self._writer
        if isinstance(writer, _LoopWriter) and not writer.retired:
            if writer.loop is asyncio.get_running_loop():
                self._writer = self._thread_writer
                writer.retire()
            else:
                log.warning("the store closed before its executor's loop let its writer go")
        if self._thread_writer is not None:
            await asyncio.to_thread(self._thread_writer.stop)
            self._writer = self._thread_writer = None
        self._readers.shutdown(wait=True)
        with self._conns_lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        if self._engine is not None:
            self._engine.dispose()

    async def write_from_here(self) -> None:
        if self._thread_writer is None or isinstance(self._writer, _LoopWriter):
            return
        conn = connect(self.path, synchronous=self.synchronous)
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
        self._writer = _LoopWriter(self, conn, asyncio.get_running_loop(), fallback=self._thread_writer)

    def delivered(self, events: list[Event], results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        """On the loop, after a commit: tell subscribers, then the writers."""
        self.hub.publish(events)
        for fut, ok, value in results:
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    async def _write(self, factory: Factory) -> Any:
        if self._writer is None:
            raise RuntimeError("the store is not open: await store.open() first")
        self.stats.writes += 1
        return await self._writer.submit(factory)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, synchronous=self.synchronous)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _read_sync(self, factory: Factory) -> Any:
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")  # one consistent snapshot for the statements of a read
            try:
                return run(cur, factory(), [])
            finally:
                cur.execute("COMMIT")
        finally:
            cur.close()

    async def _read(self, factory: Factory) -> Any:
        self.stats.reads += 1
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._read_sync, factory)

    async def _core(self, stmt: Any) -> list[Any]:
        """A SQLAlchemy Core read (listings and costs), off the loop."""
        self.stats.reads += 1

        def go() -> list[Any]:
            with self.engine.connect() as conn:
                return list(conn.execute(stmt).all())

        return await asyncio.get_running_loop().run_in_executor(self._readers, go)
