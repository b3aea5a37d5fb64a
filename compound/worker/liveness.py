"""Which workers are alive, on PostgreSQL session advisory locks: a worker holds the
lock named after its DBOS executor id for as long as it lives; the lock goes with its
session when the process dies (even by SIGKILL), so a free lock means a dead worker.
No heartbeat rows and no clocks to compare."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from compound.store.pg_notify import libpq_url

LOCK_CLASS = 0x636D7064  # 'cmpd': the first key of every worker's lock

# Who lives, for operators and tests: the sessions holding a worker's lock.
LIVE_WORKERS_SQL = (
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    f"WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = {LOCK_CLASS} "
    # pg_locks spans the server; advisory locks (and so workers) belong to one database
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def executor_key(executor_id: str) -> int:
    return zlib.crc32(executor_id.encode()) - 2**31


class Liveness:
    """`claim` once at start (on a connection kept for life), then `is_dead(other)`."""

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self._holder: Any = None  # the session that holds this worker's lock
        self._probe: Any = None  # another session: a session re-acquires its own locks

    async def _connect(self, name: str = "compound-liveness") -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(self.url, autocommit=True, application_name=name)

    async def claim(self, executor_id: str) -> bool:
        """Take this worker's lock; False if another live session holds it (an id clash).
        The holding session is named after the worker (pg_stat_activity shows who lives)."""
        if self._holder is not None:
            await self._holder.close()
        self._holder = await self._connect(executor_id)
        return await _try_lock(self._holder, executor_id)

    async def alive(self) -> bool:
        """Whether the session holding our lock still answers (if not, we must stop: the
        others will resume our tasks)."""
        try:
            await self._holder.execute("SELECT 1")
            return True
        except Exception:
            return False

    async def wait_lost(self, check_s: float) -> None:
        """Return once the session holding our lock is gone. A server that ends the
        session (a restart, pg_terminate_backend) says so on its socket, which this
        waits on: heard at once. A `SELECT 1` every `check_s` (answered within as long
        again) catches a server that went silent."""
        conn = self._holder
        try:
            while True:
                async for _ in conn.notifies(timeout=check_s):
                    pass
                async with asyncio.timeout(check_s):
                    await conn.execute("SELECT 1")
        except Exception:
            return

    async def is_dead(self, executor_id: str) -> bool:
        try:
            if self._probe is None or self._probe.closed:
                self._probe = await self._connect()
            locked = await _try_lock(self._probe, executor_id)
        except Exception:  # the probe's session died (a restart): once more on a new one
            if self._probe is not None:
                await self._probe.close()
            self._probe = await self._connect()
            locked = await _try_lock(self._probe, executor_id)
        if not locked:
            return False
        await self._probe.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, executor_key(executor_id)))
        return True

    async def close(self) -> None:
        for conn in (self._probe, self._holder):
            if conn is not None:
                await conn.close()
        self._probe = self._holder = None


async def _try_lock(conn: Any, executor_id: str) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, executor_key(executor_id)))
    row = await cur.fetchone()
    return bool(row and row[0])


NO_WORKER_NOTICE = ("no compound worker is alive to take this task: it waits in the queue until one starts "
                    "(`compound worker` with the same COMPOUND_DATABASE_URL; docs/deploy.md)")


class WorkerWatch:
    """For the API processes of queue mode: whether any worker lives (its lock is held),
    read at most once per `every_s` seconds, on a short connection."""

    def __init__(self, url: str, *, every_s: float = 2.0) -> None:
        self.url = libpq_url(url)
        self.every_s = every_s
        self._checked_at: float | None = None
        self._alive: bool | None = None
        self._lock = asyncio.Lock()

    async def any_alive(self) -> bool | None:
        """Whether a worker lives; None when the database cannot say (no notice then)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._checked_at is None or loop.time() - self._checked_at >= self.every_s:
                self._alive = await self._read()
                self._checked_at = loop.time()
            return self._alive

    async def _read(self) -> bool | None:
        import psycopg

        try:
            async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name="compound-worker-watch") as conn:
                cur = await conn.execute(f"SELECT count(*) FROM ({LIVE_WORKERS_SQL}) AS live")
                row = await cur.fetchone()
        except psycopg.Error:
            return None
        return bool(row and row[0])

    async def notice(self) -> str | None:
        """What a queued task's snapshot says while no worker is alive to take it."""
        return NO_WORKER_NOTICE if await self.any_alive() is False else None
