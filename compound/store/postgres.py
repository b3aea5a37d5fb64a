"""The RunStore on PostgreSQL: psycopg's async pool, and LISTEN/NOTIFY across processes.

Each write is one transaction on a pooled connection; it sends `pg_notify` with the
task id and the range of event seqs it wrote, delivered at commit. A dedicated
connection LISTENs, and for a task someone here subscribes to, reads the new events
and publishes them (a write of this process is published directly, and its own
notification is ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.engine import Engine

from compound.core.logging import get_logger
from compound.store import ops, outage
from compound.store.opsstore import OpsRunStore
from compound.store.sqlrun import ReadQueries
from compound.store.values import Event

log = get_logger("compound.store")
# How long an operation waits for a pooled connection before it answers that the
# database is unavailable (psycopg's default, 30 s, would hold every request that long
# while the server restarts).
POOL_WAIT_S = 5.0
CHANNEL = "compound_events"
SUB = ops.SUB_COLS
# A status write applies only from the statuses core/status.py allows (`from`: a,b,...).
ALLOWED = "status = ANY(string_to_array(%(from)s, ','))"
SQL: dict[str, str] = {
    "NEXT_SEQ": "UPDATE task SET event_seq=event_seq+%(n)s, updated_at=%(now)s WHERE id=%(t)s "
                "RETURNING event_seq, total_cost_usd",
    "INSERT_EVENT": "INSERT INTO task_event (task_id, seq, kind, data, created_at) "
                    "VALUES (%(t)s, %(seq)s, %(kind)s, %(data)s, %(now)s)",
    "INSERT_TASK": "INSERT INTO task (id, user_id, prompt, status, priority, approve, budget_usd, plan_in, "
                   "context, answer_max_tokens, rerun_of, tier_models, "
                   "total_cost_usd, reserved_usd, cancel_requested, event_seq, created_at, updated_at) VALUES "
                   "(%(id)s, %(u)s, %(p)s, %(st)s, %(pr)s, %(ap)s, %(b)s, %(plan)s, %(ctx)s, %(amt)s, %(ro)s, %(tm)s, "
                   "0, 0, false, 0, %(now)s, %(now)s)",
    "SET_STATUS_IF": "UPDATE task SET status=%(st)s, error=COALESCE(%(err)s, error), "
                     "result=COALESCE(%(res)s, result), end_reason=%(why)s, "
                     "started_at=CASE WHEN %(exec)s THEN COALESCE(started_at, %(now)s) ELSE started_at END, "
                     "completed_at=CASE WHEN %(term)s THEN %(now)s ELSE completed_at END, updated_at=%(now)s "
                     f"WHERE id=%(t)s AND {ALLOWED} RETURNING id",
    "SET_PLANNER_MODEL": "UPDATE task SET planner_model=%(m)s WHERE id=%(t)s",
    "INSERT_SUBTASK": 'INSERT INTO subtask (id, task_id, "index", description, tier_hint, tier_assigned, models, '
                      "model, depends_on, status, attempts, cost_usd, input_tokens, output_tokens, kind, tools, tool, "
                      "arguments, optional_deps, reused_from, result, completed_at, round, end_reason) VALUES "
                      "(%(id)s, %(t)s, %(i)s, %(d)s, %(th)s, %(ta)s, %(ms)s, %(m)s, %(deps)s, %(st)s, 0, 0, 0, 0, "
                      "%(k)s, %(tl)s, %(tn)s, %(args)s, %(od)s, %(rf)s, %(res)s, %(ca)s, %(rd)s, %(why)s) "
                      "ON CONFLICT (id) DO NOTHING",  # a retry after a lost commit adds nothing
    "TASK_REPLANS": "SELECT status, replans FROM task WHERE id=%(t)s FOR UPDATE",
    "REPLACE_PENDING": "UPDATE subtask SET description=%(d)s, tier_hint=%(th)s, tier_assigned=%(ta)s, models=%(ms)s, "
                       "model=%(m)s, depends_on=%(deps)s "
                       f"WHERE task_id=%(t)s AND \"index\"=%(i)s AND status='pending' RETURNING {SUB}",
    "SET_REPLANS": "UPDATE task SET replans=%(rp)s, updated_at=%(now)s WHERE id=%(t)s",
    "SAVE_PLAN": "UPDATE task SET reasoning=%(r)s, plan_in=NULL, prompt_versions=%(pv)s, warnings=%(wn)s, "
                 "status=%(st)s, "
                 f"planned_at=%(now)s, updated_at=%(now)s WHERE id=%(t)s AND {ALLOWED} RETURNING id",
    "END_SUBTASK": "UPDATE subtask SET status=%(st)s, error=%(err)s, end_reason=%(why)s, completed_at=%(now)s "
                   f'WHERE task_id=%(t)s AND "index"=%(i)s AND {ALLOWED} RETURNING {SUB}',
    "SUBTASK": f'SELECT {SUB} FROM subtask WHERE task_id=%(t)s AND "index"=%(i)s',
    "LOCK_USER": 'SELECT id FROM "user" WHERE id=%(u)s FOR UPDATE',
    "DAILY_SPENT": "SELECT COALESCE(SUM(CASE WHEN status='reserved' THEN reserved_usd ELSE cost_usd END), 0) "
                   "FROM ledger WHERE user_id=%(u)s AND created_at >= %(day)s",
    # The budget check and the reservation are one UPDATE: no row changes when it does not fit.
    "RESERVE_ON_TASK": "UPDATE task SET reserved_usd=reserved_usd+%(r)s, updated_at=%(now)s "
                       "WHERE id=%(t)s AND total_cost_usd+reserved_usd+%(r)s <= budget_usd+%(eps)s RETURNING id",
    "BUDGET_LEFT": "SELECT budget_usd-total_cost_usd-reserved_usd FROM task WHERE id=%(t)s",
    "INSERT_RESERVED": "INSERT INTO ledger (task_id, user_id, kind, subtask_index, tier, model, attempt, status, "
                       "reserved_usd, cost_usd, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
                       "created_at) VALUES (%(t)s, %(u)s, %(kind)s, %(si)s, %(tier)s, %(model)s, %(att)s, 'reserved', "
                       "%(r)s, 0, 0, 0, 0, 0, %(now)s) RETURNING id",
    "MARK_RUNNING": "UPDATE subtask SET status='running', attempts=%(att)s, model=%(model)s, "
                    f'started_at=COALESCE(started_at, %(now)s) WHERE task_id=%(t)s AND "index"=%(i)s AND {ALLOWED} '
                    f"RETURNING {SUB}",
    "SETTLE_LEDGER": "UPDATE ledger SET status=%(st)s, cost_usd=%(c)s, input_tokens=%(i)s, output_tokens=%(o)s, "
                     "cache_read_tokens=%(cr)s, cache_write_tokens=%(cw)s, latency_ms=%(lat)s, error=%(err)s, "
                     "answer=%(ans)s, settled_at=%(now)s WHERE id=%(id)s AND status=%(open)s RETURNING id",
    "SETTLE_TASK": "UPDATE task SET reserved_usd=reserved_usd-%(r)s, total_cost_usd=total_cost_usd+%(c)s, "
                   "updated_at=%(now)s WHERE id=%(t)s",
    "SETTLE_SUBTASK": "UPDATE subtask SET cost_usd=cost_usd+%(c)s, input_tokens=input_tokens+%(i)s, "
                      "output_tokens=output_tokens+%(o)s, "
                      f"status=CASE WHEN %(done)s AND {ALLOWED} THEN 'completed' ELSE status END, "
                      f"result=CASE WHEN %(done)s AND {ALLOWED} THEN %(res)s::text ELSE result END, "
                      f"error=CASE WHEN %(done)s AND {ALLOWED} THEN NULL ELSE error END, "
                      f"end_reason=CASE WHEN %(done)s AND {ALLOWED} THEN %(why)s::text ELSE end_reason END, "
                      f"completed_at=CASE WHEN %(done)s AND {ALLOWED} THEN %(now)s ELSE completed_at END "
                      f'WHERE task_id=%(t)s AND "index"=%(idx)s RETURNING {SUB}',
    "OPEN_ROWS": "SELECT id, reserved_usd FROM ledger WHERE task_id=%(t)s AND status=%(st)s",
    "CLOSE_ROW": "UPDATE ledger SET status=%(st)s, cost_usd=reserved_usd, settled_at=%(now)s, error=%(err)s "
                 "WHERE id=%(id)s",
    "MOVE_RESERVED": "UPDATE task SET reserved_usd=0, total_cost_usd=total_cost_usd+%(spent)s, updated_at=%(now)s "
                     "WHERE id=%(t)s",
    "RESET_RUNNING": "UPDATE subtask SET status=%(pending)s WHERE task_id=%(t)s AND status=%(running)s",
    "REQUEST_CANCEL": "UPDATE task SET cancel_requested=true WHERE id=%(t)s RETURNING status",
    "CANCEL_SUBTASKS": "UPDATE subtask SET status=%(st)s, error=%(err)s, end_reason=%(why)s, completed_at=%(now)s "
                       f"WHERE task_id=%(t)s AND {ALLOWED} RETURNING {SUB}",
    "SET_APPROVED": "UPDATE task SET approve=true WHERE id=%(t)s",
    # tool calls (design.md section 11): the intent, written before the call is sent; a
    # call sent again after a crash (same id: its idempotency key) starts over
    "TOOL_INTENT": "INSERT INTO tool_call (id, task_id, subtask_index, turn, model_call_id, tool, arguments, status, "
                   "started_at) VALUES (%(id)s, %(t)s, %(i)s, %(turn)s, %(mid)s, %(tool)s, %(args)s, %(st)s, %(now)s) "
                   "ON CONFLICT (id) DO UPDATE SET status=excluded.status, started_at=excluded.started_at, "
                   "result=NULL, error=NULL, completed_at=NULL "
                   f"RETURNING {ops.TOOL_COLS}",
    "MARK_ACTING": "UPDATE subtask SET status='running', started_at=COALESCE(started_at, %(now)s) "
                   f'WHERE task_id=%(t)s AND "index"=%(i)s AND status IN (%(pending)s, %(aw)s) RETURNING {SUB}',
    "TOOL_END": "UPDATE tool_call SET status=%(st)s, result=%(res)s, error=%(err)s, completed_at=%(now)s "
                f"WHERE id=%(id)s AND task_id=%(t)s RETURNING {ops.TOOL_COLS}",
    "TOOL_CALLS": f"SELECT {ops.TOOL_COLS} FROM tool_call WHERE task_id=%(t)s AND subtask_index=%(i)s "
                  "ORDER BY started_at, id",
    "SNAP_TOOL_CALLS": f"SELECT {ops.TOOL_COLS} FROM tool_call WHERE task_id=%(t)s "
                       "ORDER BY subtask_index, started_at, id",
    "TOOL_CALLS_UNKNOWN": "UPDATE tool_call SET status=%(unknown)s, error=%(err)s, completed_at=%(now)s "
                          f"WHERE task_id=%(t)s AND status=%(running)s RETURNING {ops.TOOL_COLS}",
    # calls held for approval (design.md section 11): a decision applies only while the
    # call awaits it
    "TOOL_HOLD": "INSERT INTO tool_call (id, task_id, subtask_index, turn, model_call_id, tool, arguments, status, "
                 "started_at) VALUES (%(id)s, %(t)s, %(i)s, %(turn)s, %(mid)s, %(tool)s, %(args)s, %(st)s, %(now)s) "
                 "ON CONFLICT (id) DO UPDATE SET status=excluded.status, started_at=excluded.started_at, "
                 "result=NULL, error=NULL, completed_at=NULL, decision=NULL, decided_by=NULL, decided_at=NULL, "
                 "decided_arguments=NULL, decision_message=NULL "
                 f"RETURNING {ops.TOOL_COLS}",
    "MARK_AWAITING": "UPDATE subtask SET status=%(aw)s, started_at=COALESCE(started_at, %(now)s) "
                     f'WHERE task_id=%(t)s AND "index"=%(i)s AND status IN (%(pending)s, %(running)s) '
                     f"RETURNING {SUB}",
    "UNMARK_AWAITING": "UPDATE subtask SET status=%(running)s "
                       f'WHERE task_id=%(t)s AND "index"=%(i)s AND status=%(aw)s RETURNING {SUB}',
    "TOOL_DECIDE": "UPDATE tool_call SET status=%(st)s, decision=%(dec)s, decided_by=%(by)s, decided_at=%(now)s, "
                   "decided_arguments=%(da)s, decision_message=%(msg)s, error=%(err)s, completed_at=%(ca)s "
                   f"WHERE id=%(id)s AND task_id=%(t)s AND status=%(aw)s RETURNING {ops.TOOL_COLS}",
    # the task row first, as a status write and a reservation take it: one lock order
    "LOCK_TASK": "SELECT status FROM task WHERE id=%(t)s FOR UPDATE",
    "TOOL_CALL_STATUS": "SELECT status FROM tool_call WHERE id=%(id)s AND task_id=%(t)s",
    "COMPLETE_SUBTASK": "UPDATE subtask SET status='completed', result=%(res)s, partial_reason=%(pr)s, error=NULL, "
                        f'end_reason=%(why)s, completed_at=%(now)s WHERE task_id=%(t)s AND "index"=%(i)s '
                        f"AND {ALLOWED} RETURNING {SUB}",
    "LOAD_TASK": f"SELECT {ops.TASK_COLS} FROM task WHERE id=%(t)s",
    "LOAD_SUBTASKS": f'SELECT {SUB} FROM subtask WHERE task_id=%(t)s ORDER BY "index"',
    "UNFINISHED": "SELECT id FROM task WHERE status <> ALL(%(terminal)s) ORDER BY priority, created_at",
    "USER_DAILY_BUDGET": 'SELECT daily_budget_usd FROM "user" WHERE id=%(u)s',
    "EVENTS_AFTER": "SELECT seq, kind, data FROM task_event WHERE task_id=%(t)s AND seq>%(s)s ORDER BY seq "
                    "LIMIT %(n)s",
    "HEAD": "SELECT id, user_id, status, event_seq FROM task WHERE id=%(t)s",
    "SNAP_TASK": f"SELECT {ops.SNAP_TASK_COLS} FROM task WHERE id=%(t)s",
    "SNAP_SUBTASKS": f'SELECT {ops.SNAP_SUB_COLS} FROM subtask WHERE task_id=%(t)s ORDER BY "index"',
    # a task's calls by part (kind, subtask), model and whether booked at the worst case
    "SNAP_LEDGER": "SELECT kind, subtask_index, model, CASE WHEN status IN (%(lost)s, %(canceled)s) "
                   "THEN 1 ELSE 0 END, COALESCE(SUM(cost_usd), 0), "
                   "COALESCE(SUM(input_tokens + cache_read_tokens + cache_write_tokens), 0), "
                   "COALESCE(SUM(output_tokens), 0), COUNT(*), MAX(id) FROM ledger WHERE task_id=%(t)s "
                   "GROUP BY 1, 2, 3, 4",
    "TASK_COUNTS": "SELECT status, COUNT(*) FROM task GROUP BY status",
    "TOKEN": 'SELECT k.id, k.user_id, k.token_hash, k.scopes, k.revoked_at, u.name FROM api_token k '
             'JOIN "user" u ON u.id = k.user_id WHERE k.token_hash=%(h)s',
}


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
        self.origin = uuid.uuid4().hex[:12]  # this store's notifications, ignored by its own listener
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.listener_pid: int | None = None  # the LISTEN session's backend (diagnostics, tests)
        self._engine: Engine | None = None
        self._pg = pg_psycopg.dialect()  # type: ignore[no-untyped-call]
        self._opened = False
        self.queries = ReadQueries("postgresql")

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
            self._listener = asyncio.get_running_loop().create_task(self._listen())
            await self._listening.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self.pool.close()
        if self._engine is not None:
            self._engine.dispose()

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection; when it drops, reconnect and publish what
        the tasks watched here committed meanwhile (`_catch_up`)."""
        lost = False
        while True:
            try:
                async with await AsyncConnection.connect(conninfo(self.url), autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listener_pid = conn.info.backend_pid
                    self._listening.set()
                    if lost:
                        await self._catch_up()
                        lost = False
                    async for note in conn.notifies():
                        await self._notified(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event listener lost its connection; reconnecting")
                lost = True
                self._listening.set()
                await asyncio.sleep(0.5)

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

    async def _notified(self, payload: str) -> None:
        try:
            origin, task_id, first, last = payload.rsplit(":", 3)
            lo, hi = int(first), int(last)
        except ValueError:
            return
        if origin == self.origin or not self.hub.watched(task_id):
            return
        self.hub.publish(await self.events_after(task_id, lo - 1, limit=hi - lo + 1))

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
                    await cur.execute("SELECT pg_notify(%(c)s, %(p)s)",
                                      {"c": CHANNEL, "p": f"{self.origin}:{task_id}:{lo}:{hi}"})
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
