"""Per-model caps on calls in flight that hold across every worker, on PostgreSQL
advisory locks: slot k of model m is the session lock (crc32(m), k), held by one
pooled connection for the call's duration. A killed worker's sessions end, so its
slots free themselves; no lease to time out. Shaped like asyncio.Semaphore
(`acquire()` / `release()`) so the executor uses either behind one seam."""

from __future__ import annotations

import asyncio
import contextlib
import random
import zlib
from collections.abc import Callable
from typing import Any

from compound.core.logging import get_logger
from compound.store.outage import outage_as_error
from compound.store.pg_notify import SLOT_FREE, libpq_url

log = get_logger("compound.store.pg_slots")

# Upper bound of one wait between two tries when no release was heard (a killed
# worker frees its slots without a NOTIFY).
RETRY_S = 0.2


def model_key(model: str) -> int:
    """The advisory lock's first key for a model (a signed 32-bit int)."""
    return zlib.crc32(model.encode()) - 2**31


class PgModelSlots:
    """The per-model limits of one worker process. `limit_for(model)` is the executor's
    hook (None: unlimited); `released(model)` is fed by a LISTEN on SLOT_FREE."""

    def __init__(self, url: str, limits: Callable[[str], int | None]) -> None:
        self.url = libpq_url(url)
        self.limits = limits
        self._models: dict[str, PgModelLimit] = {}
        self._idle: list[Any] = []  # psycopg.AsyncConnection, kept for reuse
        self._releases: set[asyncio.Task[None]] = set()

    def limit_for(self, model: str) -> PgModelLimit | None:
        limit = self.limits(model)
        if limit is None:
            return None
        got = self._models.get(model)
        if got is None:
            got = self._models[model] = PgModelLimit(self, model, limit)
        return got

    def released(self, model: str) -> None:
        got = self._models.get(model)
        if got is not None:
            got.wake.set()

    async def _connection(self) -> Any:
        import psycopg

        if self._idle:
            return self._idle.pop()
        return await psycopg.AsyncConnection.connect(self.url, autocommit=True)

    async def _give_back(self, conn: Any, *, broken: bool = False) -> None:
        if broken or conn.closed:
            await conn.close()
        else:
            self._idle.append(conn)

    def _spawn_release(self, conn: Any, model: str, slot: int, then: Callable[[], None]) -> None:
        task = asyncio.get_running_loop().create_task(self._unlock(conn, model, slot))
        task.add_done_callback(lambda _: then())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _unlock(self, conn: Any, model: str, slot: int) -> None:
        try:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s), pg_notify(%s, %s)",
                               (model_key(model), slot, SLOT_FREE, model))
        except Exception:  # the session is gone, and with it the lock
            log.warning("could not release a model slot; dropping its connection", model=model)
            await self._give_back(conn, broken=True)
            return
        await self._give_back(conn)

    async def close(self) -> None:
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        while self._idle:
            await self._idle.pop().close()


class PgModelLimit:
    """One model's cluster-wide cap. A local semaphore first (this process never holds
    more than the cap), then a free advisory-lock slot."""

    def __init__(self, owner: PgModelSlots, model: str, limit: int) -> None:
        self.owner = owner
        self.model = model
        self.limit = limit
        self.local = asyncio.Semaphore(limit)
        self.wake = asyncio.Event()
        self._held: list[tuple[Any, int]] = []

    async def acquire(self) -> bool:
        """DatabaseUnavailable when the database went away meanwhile (the task is run
        again once it is back)."""
        with outage_as_error():
            return await self._acquire()

    async def _acquire(self) -> bool:
        await self.local.acquire()
        try:
            conn = await self.owner._connection()
        except BaseException:
            self.local.release()
            raise
        key = model_key(self.model)
        try:
            while True:
                self.wake.clear()
                start = random.randrange(self.limit)  # spread the workers over the slots
                order = [(start + i) % self.limit for i in range(self.limit)]
                got = None
                for slot in order:  # one round trip each; stops at the first free slot
                    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (key, slot))
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        got = slot
                        break
                if got is not None:
                    self._held.append((conn, got))
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=RETRY_S)
        except BaseException:
            await self.owner._give_back(conn, broken=True)  # closing the session drops any lock it took
            self.local.release()
            raise

    def release(self) -> None:
        conn, slot = self._held.pop()
        # The local slot frees once the lock is gone, so this process's next caller
        # finds a free lock instead of waiting for the NOTIFY.
        self.owner._spawn_release(conn, self.model, slot, self.local.release)
