"""`compound worker`: takes whole tasks from the DBOS queue and runs each with the same
Executor as `compound serve` (its DAG runs here with asyncio). It is woken by NOTIFY
when a task is enqueued (wake.py; DBOS's poll is the fallback), hears cancels by
NOTIFY, shares per-model caps with every other worker (store.pg_slots), resumes the
tasks of workers that died (DBOS recovery, once liveness says they are gone), rides
out a database restart (its tasks stop, and go back to the queue once its liveness
lock is its own again), and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from typing import Any

from compound.core.logging import get_logger
from compound.core.settings import Settings
from compound.executor.answers import ForwardedAnswers
from compound.executor.service import Executor
from compound.llm.base import LLMClient
from compound.signals.bus import Cancel, Listen, QueueWake, SlotFree
from compound.signals.postgres import PgSignals
from compound.store.base import RunStore
from compound.store.pg_slots import PgModelSlots
from compound.worker import dbos_private, names, wake
from compound.worker.liveness import Liveness

log = get_logger("compound.worker")

# After a lost liveness session: the first retry to take the lock again, doubling up to
# the max (so a worker is back within about RECONNECT_MAX_S of the database).
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
# How long a suspending worker waits for its stopped tasks and its queue thread.
SUSPEND_WAIT_S = 5.0

_worker: Worker | None = None  # the worker the registered workflow runs tasks with
_registered = False


def register_workflow() -> None:
    """Register the one workflow with DBOS (once per process). It holds no steps: the
    store is the truth, and a recovered workflow just calls the idempotent run again."""
    global _registered
    if _registered:
        return
    from dbos import DBOS

    @DBOS.workflow(name=names.WORKFLOW)
    async def compound_run_task(task_id: str) -> None:
        if _worker is None:  # pragma: no cover - launch() happens after the worker exists
            raise RuntimeError("no worker in this process")
        await _worker.run_workflow(task_id)

    _registered = True


class Worker:
    def __init__(self, *, settings: Settings, store: RunStore, client: LLMClient,
                 observers: list[Any] | None = None) -> None:
        names.check_queue_settings(settings)
        self.settings = settings
        self.store = store
        def limits(model: str) -> int | None:
            return settings.model_config_for(model).max_concurrency

        self.slots = PgModelSlots(settings.database_url, limits) if any(
            settings.model_config_for(m).max_concurrency for m in settings.all_models()) else None
        # Cancels, wake-ups, freed slots and the answers' listeners are heard, and the
        # pieces of a streamed answer go out, by NOTIFY (signals/postgres.py): the
        # synthesis streams while an API process's door has a client listening to it.
        self.signals = PgSignals(settings.database_url, engine=lambda: store.engine)
        self.answers = ForwardedAnswers(self.signals.publish)
        self.executor = Executor(settings=settings, store=store, client=client,
                                 observers=observers or (), model_slots=self.slots,
                                 stream_answers=True, answers=self.answers)
        self.liveness = Liveness(settings.database_url)
        # Woken at once when a task is enqueued (or, with a global cap, a task ends on
        # another worker); DBOS's own poll is only the fallback (wake.py).
        self.bell = wake.Doorbell()
        self.signals.subscribe(Cancel, lambda c: self.executor.cancel_heard(c.task_id))
        self.signals.subscribe(QueueWake, lambda _: self.bell.ring())
        self.signals.subscribe(Listen, lambda li: self.answers.want(li.task_id, li.wanted))
        if self.slots is not None:
            slots = self.slots
            self.signals.subscribe(SlotFree, lambda f: slots.released(f.model))
        # Enqueues NOTIFY on DBOS's database (in their own transaction): listen there too.
        self.sys_signals: PgSignals | None = None
        if settings.system_database_url() != settings.database_url:
            self.sys_signals = PgSignals(settings.system_database_url())
            self.sys_signals.subscribe(QueueWake, lambda _: self.bell.ring())
        self.executor_id = ""
        self._background: set[asyncio.Task[None]] = set()
        self._workflows: set[asyncio.Task[Any]] = set()  # DBOS's tasks running our workflow here
        # Set while the session holding our liveness lock is lost: nothing runs here
        # until the lock is ours again and our tasks are back in the queue.
        self.suspended = False

    async def start(self) -> None:
        global _worker
        from dbos import DBOS

        await self.executor.open_tools()  # the MCP servers' sessions, before a task can run here
        await self.signals.start()
        if self.sys_signals is not None:
            await self.sys_signals.start()
        for _ in range(5):  # a clash of lock keys is all but impossible; a new id settles it
            self.executor_id = f"worker-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            if await self.liveness.claim(self.executor_id):
                break
        else:
            raise RuntimeError("could not claim a liveness lock")
        _worker = self
        register_workflow()
        wake.install(names.QUEUE, self.bell)  # before DBOS starts the queue's thread
        DBOS(config={
            "name": names.APP_NAME,
            "system_database_url": self.settings.system_database_url(),
            "executor_id": self.executor_id,
            "application_version": names.APP_VERSION,
            "log_level": "WARNING",
        })
        DBOS.launch()  # called on this loop: DBOS runs our async workflows on it
        # DBOS keeps a queue's limits in its system tables; every worker writes the same
        # settings, the last one started wins (docs/deploy.md).
        await DBOS.register_queue_async(
            names.QUEUE, global_concurrency=self.settings.queue_concurrency,
            worker_concurrency=self.settings.worker_concurrency,
            polling_interval_sec=self.settings.queue_polling_interval_s, on_conflict="always_update")
        self._spawn(self._reap_loop())
        self._spawn(self._session_loop())
        log.info("worker started", executor_id=self.executor_id,
                 worker_concurrency=self.settings.worker_concurrency)

    async def run_workflow(self, task_id: str) -> None:
        """The workflow's body. It runs inside DBOS's task for the workflow, which records
        the outcome and gives up the workflow's place in this worker's count after we
        return: that task's end is when this worker has room for another."""
        if self.suspended:
            # Claimed as our lock session went: not run here (another worker may be
            # resuming it). Left PENDING, it goes back to the queue with the others.
            raise asyncio.CancelledError
        dbos_task = asyncio.current_task()
        if dbos_task is not None:
            self._workflows.add(dbos_task)
            dbos_task.add_done_callback(self._workflow_ended)
        from dbos import DBOS

        if not await self._still_ours(DBOS.workflow_id or task_id):
            # Claimed before a lost session, started after our tasks went back to the
            # queue (DBOS's queue thread was retrying the database in between): the
            # claim is stale, and another claim (ours or another worker's) runs it.
            log.warning("a stale claim of a task is not run", task_id=task_id)
            raise asyncio.CancelledError
        await self.executor.run_here(task_id)

    async def _still_ours(self, workflow_id: str) -> bool:
        """Whether DBOS still has this workflow (the task's, or its approval's) PENDING on
        this worker, read again until the database answers (cancel stops the wait)."""
        from dbos import DBOS

        delay = RECONNECT_FIRST_S
        while True:
            try:
                # On a thread of its own, outside the workflow's context: inside it DBOS
                # would record the read as a step of the workflow and replay it later.
                found = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                    DBOS.list_workflows, workflow_ids=[workflow_id], load_input=False, load_output=False))
                return any(w.status == "PENDING" and w.executor_id == self.executor_id for w in found)
            except Exception as exc:
                log.warning("could not read a task's claim yet", workflow_id=workflow_id,
                            error=type(exc).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _workflow_ended(self, task: asyncio.Task[Any]) -> None:
        self._workflows.discard(task)
        if self.bell.closed or self.suspended:
            return
        self.bell.ring()
        if self.settings.queue_concurrency is not None:
            # A cap on all workers together: any of them may have room now.
            self._spawn(self.signals.send(QueueWake()))

    async def drain(self, grace_s: float, hurry: asyncio.Event | None = None) -> int:
        """Take no more tasks and wait up to `grace_s` (or until `hurry` is set) for the
        running ones to end; returns how many still run (stop() leaves them to be
        resumed elsewhere)."""
        self.bell.close()
        log.warning("worker draining: taking no more tasks", running=len(self._workflows), grace_s=grace_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        hurried = asyncio.ensure_future((hurry or asyncio.Event()).wait())
        try:
            while self._workflows and not hurried.done() and (left := deadline - loop.time()) > 0:
                await asyncio.wait([*self._workflows, hurried], timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurried.cancel()
        return len(self._workflows)

    async def stop(self) -> None:
        from dbos import DBOS

        self.bell.close()  # DBOS's queue thread claims no more tasks for this worker
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.executor.stop()  # running tasks stay PENDING in DBOS, for another worker
        await asyncio.to_thread(DBOS.destroy, destroy_registry=False)
        wake.uninstall(names.QUEUE)
        await self.signals.stop()
        if self.sys_signals is not None:
            await self.sys_signals.stop()
        if self.slots is not None:
            await self.slots.close()
        await self.liveness.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.dead_worker_check_s)
            if self.suspended:
                continue
            try:
                await self.reap_once()
            except Exception:  # the database blinked: next round
                log.exception("dead-worker check failed")

    # our own liveness session --------------------------------------------------------

    async def _session_loop(self) -> None:
        """When the session holding our lock is lost (a database restart, a terminated
        backend), the other workers may resume our tasks as soon as they find the lock
        free: stop running them here at once, take the lock again (with backoff) and
        hand our unfinished tasks back to the queue, where whoever has room (we too)
        resumes each once. Instead of exiting: a worker is back within a few seconds
        of the database."""
        while True:
            await self.liveness.wait_lost(self.settings.dead_worker_check_s)
            lost_at = asyncio.get_running_loop().time()
            try:
                await self.suspend()
                await self._reclaim()
                await self._requeue_own()
            except Exception:  # pragma: no cover - each step retries its own failures
                # Cannot tell what runs here any more: stop the process (the old
                # fail-stop) rather than risk a task running twice.
                log.exception("could not recover from a lost liveness session; exiting")
                os._exit(70)
            self.suspended = False
            self.bell.resume()
            log.warning("liveness session back; taking tasks again", executor_id=self.executor_id,
                        after_s=round(asyncio.get_running_loop().time() - lost_at, 2))

    async def suspend(self) -> None:
        """Stop every task running here, leaving each PENDING in DBOS (its workflow's
        task is cancelled, so no outcome is recorded), and claim nothing meanwhile."""
        self.suspended = True
        self.bell.pause()
        running = list(self._workflows)
        log.error("lost the liveness session: stopping this worker's tasks; they resume once it is back",
                  executor_id=self.executor_id, running=len(running))
        for task in running:
            task.cancel()
        # A claim the queue thread had under way starts its workflow now or never: wait
        # until the thread sits paused (its started workflows find us suspended).
        parked = asyncio.ensure_future(asyncio.to_thread(self.bell.wait_parked, SUSPEND_WAIT_S))
        _, still = await asyncio.wait(running, timeout=SUSPEND_WAIT_S) if running else (set(), set())
        if still:  # e.g. psycopg waits up to 10 s for a query's cancel on a dead server
            log.warning("some stopped tasks have not ended yet; going on", tasks=len(still))
        if not await parked:
            log.warning("the queue thread did not pause in time; going on")

    async def _reclaim(self) -> None:
        delay = RECONNECT_FIRST_S
        while True:
            try:
                if await self.liveness.claim(self.executor_id):
                    return
                # held for an instant by another worker's probe: it finds us dead and
                # requeues our tasks, which is what we do next anyway
            except Exception as exc:
                log.warning("database not back yet", error=type(exc).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _requeue_own(self) -> None:
        """Put this worker's PENDING workflows back in the queue (DBOS re-enqueues each
        only while it is still PENDING on us: once, whoever else tries it too), until
        none is left (a failed re-enqueue is only logged by DBOS)."""
        from dbos import DBOS

        delay = RECONNECT_FIRST_S
        while True:
            try:
                pending = await asyncio.to_thread(DBOS.list_workflows, status="PENDING", queue_name=names.QUEUE,
                                                  load_input=False, load_output=False)
                mine = [w for w in pending if w.executor_id == self.executor_id]
                if not mine:
                    return
                await asyncio.to_thread(dbos_private.recover_pending_workflows, [self.executor_id])
                log.warning("our tasks are back in the queue", tasks=len(mine))
                await self.signals.send(QueueWake())
                await asyncio.sleep(RECONNECT_FIRST_S)  # then make sure none was left
            except Exception as exc:
                log.warning("could not requeue our tasks yet", error=type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    # dead workers -------------------------------------------------------------------

    async def reap_once(self) -> list[str]:
        """Hand the PENDING workflows of every dead worker back to the queue; returns the
        dead executor ids. Idempotent across workers: DBOS re-enqueues a workflow only
        while it is still PENDING on the dead executor."""
        from dbos import DBOS

        pending = await asyncio.to_thread(DBOS.list_workflows, status="PENDING", queue_name=names.QUEUE,
                                          load_input=False, load_output=False)
        others = {w.executor_id for w in pending if w.executor_id and w.executor_id != self.executor_id}
        dead = [e for e in sorted(others) if await self.liveness.is_dead(e)]
        if dead:
            handles = await asyncio.to_thread(dbos_private.recover_pending_workflows, dead)
            log.warning("resuming the tasks of dead workers", workers=dead, tasks=len(handles))
            if handles:  # back in the queue: whoever has room takes them now
                self.bell.ring()
                await self.signals.send(QueueWake())
        return dead


async def run_worker(settings: Settings, stop: asyncio.Event, hurry: asyncio.Event | None = None) -> None:
    """The process: build, start, run until `stop` is set, drain (cut short by
    `hurry`), stop."""
    from compound.core.heap import settle_heap
    from compound.llm import build_client
    from compound.store import open_store, store_options

    async with open_store(settings.database_url, **store_options(settings)) as store:
        client = build_client(settings)
        await client.warm()
        worker = Worker(settings=settings, store=store, client=client)
        await worker.start()
        settle_heap()  # start-up is over
        try:
            await stop.wait()
            left = await worker.drain(settings.worker_drain_s, hurry)
            if left:
                log.warning("grace period over; the tasks left will be resumed by another worker", tasks=left)
        finally:
            with contextlib.suppress(Exception):
                await worker.stop()
            with contextlib.suppress(Exception):
                await client.aclose()
