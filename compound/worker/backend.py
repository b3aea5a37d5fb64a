"""The API process's side of queue mode: a RemoteHost (executor/remote.py) whose
tasks start by DBOS enqueue, over PostgreSQL's LISTEN/NOTIFY (signals/postgres.py).
The routes store tasks; each enqueue NOTIFYs the workers in its own transaction
(worker/wake.py), so a task starts without waiting for a worker's poll; a cancel
reaches the task wherever it is, and a door's listener hears the answer the worker
running the task streams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from compound.core.errors import DatabaseUnavailable
from compound.core.logging import get_logger
from compound.core.money import Price
from compound.core.settings import Settings
from compound.executor.remote import RemoteHost
from compound.signals.bus import QueueWake
from compound.signals.postgres import PgSignals, payloads
from compound.store import pg_notify
from compound.store.base import RunStore
from compound.store.models import TaskStatus
from compound.store.outage import outage_as_error
from compound.worker import names

log = get_logger("compound.worker.backend")

# An enqueue that found the database gone is tried again after this, doubling up to the max.
ENQUEUE_RETRY_S = 0.2
ENQUEUE_RETRY_MAX_S = 5.0


class QueueStarter:
    """Starts a task by enqueueing it with DBOS's client (the workflow id is the task's,
    or its approval's: DBOS ignores a second enqueue of one id)."""

    def __init__(self, *, settings: Settings, store: RunStore, signals: PgSignals) -> None:
        self.settings = settings
        self.store = store
        self.signals = signals
        self.client: Any = None
        self.sys_engine: Any = None  # DBOS's database: enqueues and their NOTIFYs
        self._retries: set[asyncio.Task[None]] = set()  # enqueues waiting for the database

    async def start(self) -> list[str]:
        """Create DBOS's system tables if needed, connect, and enqueue any stored task that
        never reached the queue (a crash between the store's commit and the enqueue)."""
        from dbos import DBOS, DBOSClient

        from compound.store.db import make_engine

        url = self.settings.system_database_url()
        await asyncio.to_thread(DBOS.migrate, url)
        self.sys_engine = make_engine(url)
        self.client = await asyncio.to_thread(lambda: DBOSClient(system_database_engine=self.sys_engine,
                                                                 application_name=names.APP_NAME))
        queued = []
        for task_id in await self.store.unfinished_task_ids():
            st = await self.store.load(task_id)
            if st is not None and st.status == TaskStatus.queued:
                await asyncio.to_thread(self._enqueue, task_id, st.priority)
                queued.append(task_id)
        return queued

    async def stop(self) -> None:
        for task in self._retries:  # a stored task left queued is enqueued by the next start
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
        if self.client is not None:
            await asyncio.to_thread(self.client.destroy)
            self.client = None
        if self.sys_engine is not None:
            self.sys_engine.dispose()
            self.sys_engine = None

    def _enqueue(self, workflow_id: str, priority: int, task_id: str | None = None) -> None:
        """Enqueue and wake the workers in one transaction on DBOS's database: the NOTIFY
        is delivered when the row is there to claim, and only then."""
        task_id = task_id or workflow_id
        with outage_as_error(), self.sys_engine.begin() as conn:
            self.client.enqueue_in_transaction(conn, names.enqueue_options(workflow_id, priority), task_id)
            for channel, payload in payloads(QueueWake(task_id)):
                pg_notify.notify(conn, channel, payload)

    async def start_task(self, task_id: str, priority: int, *, approved: bool = False) -> None:
        """Enqueue a stored task at its priority (blocking I/O, so in a thread: the event
        loop serves on meanwhile); an approved one under its approval's workflow id."""
        workflow_id = names.approve_workflow_id(task_id) if approved else task_id
        await self._enqueue_or_later(workflow_id, priority, task_id)

    async def _enqueue_or_later(self, workflow_id: str, priority: int, task_id: str) -> None:
        """Enqueue now, or, when the database went away after the task was stored, keep
        trying in the background: the request that stored it succeeded (answering 503
        would make its client store a second task, or find an approval already given)."""
        try:
            await asyncio.to_thread(self._enqueue, workflow_id, priority, task_id)
        except DatabaseUnavailable as exc:
            log.warning("database unavailable; the task is enqueued once it is back", workflow_id=workflow_id,
                        error=exc.message)
            retry = asyncio.get_running_loop().create_task(self._enqueue_when_back(workflow_id, priority, task_id))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)

    async def _enqueue_when_back(self, workflow_id: str, priority: int, task_id: str) -> None:
        delay = ENQUEUE_RETRY_S
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self._enqueue, workflow_id, priority, task_id)
                return
            except DatabaseUnavailable:
                delay = min(delay * 2, ENQUEUE_RETRY_MAX_S)


class QueueBackend(RemoteHost):
    """Queue mode's host: tasks start by DBOS enqueue; signals go by NOTIFY."""

    def __init__(self, *, settings: Settings, store: RunStore,
                 price_of: Callable[[str], Price] | None = None) -> None:
        names.check_queue_settings(settings)
        signals = PgSignals(settings.database_url, engine=lambda: store.engine)
        self.queue = QueueStarter(settings=settings, store=store, signals=signals)
        super().__init__(settings=settings, store=store, signals=signals, starter=self.queue, price_of=price_of)
