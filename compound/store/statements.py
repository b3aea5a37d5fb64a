"""Every statement the ops modules (ops.py, ops_calls.py, ops_tools.py, ops_reads.py)
name, written once in SQLAlchemy Core over models.py's tables, compiled once per
database into the plain text its driver runs.

Each parameter is a `bindparam` named as they name it. A `Flavor` holds the few
things the two databases do differently: the status test of a conditional write, the
test for a task not ended, the INSERT that knows ON CONFLICT, and a timestamp's day
(the cost reads of sqlrun.py). SQLAlchemy's compilers handle the rest (`FOR UPDATE`,
which SQLite has no use for, booleans, quoting). The drivers pass parameters to sqlite3
and psycopg as they are, so what a parameter holds (JSON text or psycopg's Json, a time
as SQLite's text or a naive UTC datetime) is the driver's Dialect's business.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    String,
    Table,
    Text,
    all_,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    insert,
    literal_column,
    null,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.engine import BindTyping, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import BindParameter

from compound.store import ops
from compound.store.models import (
    TERMINAL_TASK,
    ApiToken,
    CallStatus,
    LedgerEntry,
    Subtask,
    SubtaskStatus,
    Task,
    TaskEvent,
    ToolCallRow,
    User,
)

T: Table = Task.__table__  # type: ignore[attr-defined]
S: Table = Subtask.__table__  # type: ignore[attr-defined]
L: Table = LedgerEntry.__table__  # type: ignore[attr-defined]
E: Table = TaskEvent.__table__  # type: ignore[attr-defined]
C: Table = ToolCallRow.__table__  # type: ignore[attr-defined]
U: Table = User.__table__  # type: ignore[attr-defined]
K: Table = ApiToken.__table__  # type: ignore[attr-defined]


def p(name: str, type_: Any = None) -> BindParameter[Any]:
    """A parameter ops.py passes by this name."""
    return bindparam(name, type_=type_)


def word(value: str) -> ColumnElement[str]:
    """A constant status written into the statement (never a parameter)."""
    if not re.fullmatch(r"[a-z_]+", value):
        raise ValueError(f"not a status word: {value!r}")
    return literal_column(f"'{value}'", String)


def num(value: int) -> ColumnElement[int]:
    return literal_column(str(int(value)), Integer)


def cols(table: Table, names: str) -> list[ColumnElement[Any]]:
    """The columns of ops.py's column lists (SUB_COLS, ...), in their order."""
    return [table.c[n.strip().strip('"')] for n in names.split(",")]


class Flavor:
    """What one database does differently; one subclass per database."""

    name: str
    insert: Callable[[Table], Any]  # the dialect's insert(), which knows ON CONFLICT

    def dialect(self) -> Dialect:
        raise NotImplementedError

    def allowed(self, status: ColumnElement[str]) -> ColumnElement[bool]:
        """The row's status is one of the `from` parameter's (`a,b,...`: core/status.py csv)."""
        raise NotImplementedError

    def not_ended(self, status: ColumnElement[str]) -> ColumnElement[bool]:
        """A task status that is not terminal (ops passes them as `terminal`)."""
        raise NotImplementedError

    def day(self, at: ColumnElement[Any]) -> ColumnElement[str]:
        """A timestamp column's UTC day as YYYY-MM-DD (the cost view's groups)."""
        raise NotImplementedError


class SqliteFlavor(Flavor):
    name = "sqlite"
    insert = staticmethod(sqlite.insert)

    def dialect(self) -> Dialect:
        return sqlite.dialect(paramstyle="named")

    def allowed(self, status: ColumnElement[str]) -> ColumnElement[bool]:
        comma = literal_column("','", String)
        return func.instr(comma + p("from", String) + comma, comma + status + comma) > num(0)

    def not_ended(self, status: ColumnElement[str]) -> ColumnElement[bool]:
        return status.not_in([word(s) for s in sorted(TERMINAL_TASK)])  # sqlite3 binds no list

    def day(self, at: ColumnElement[Any]) -> ColumnElement[str]:
        return func.substr(at, num(1), num(10))  # stored as text, in SQLAlchemy's format


class PostgresFlavor(Flavor):
    name = "postgresql"
    insert = staticmethod(postgresql.insert)

    def dialect(self) -> Dialect:
        d = psycopg.dialect(paramstyle="pyformat")  # type: ignore[no-untyped-call]
        # psycopg adapts each parameter as the text before it says (no cast on every
        # parameter); a statement casts where PostgreSQL cannot infer a type.
        d.bind_typing = BindTyping.NONE
        return d

    def allowed(self, status: ColumnElement[str]) -> ColumnElement[bool]:
        return status == any_(func.string_to_array(p("from"), literal_column("','")))

    def not_ended(self, status: ColumnElement[str]) -> ColumnElement[bool]:
        return status != all_(p("terminal"))

    def day(self, at: ColumnElement[Any]) -> ColumnElement[str]:
        return func.to_char(at, literal_column("'YYYY-MM-DD'"))


# A token's row and its user's name by the token's hash (also users.py's, on an engine).
TOKEN_LOOKUP = (select(K.c.id, K.c.user_id, K.c.token_hash, K.c.scopes, K.c.revoked_at, U.c.name)
                .join_from(K, U, U.c.id == K.c.user_id).where(K.c.token_hash == p("h")))
SQLITE = SqliteFlavor()
POSTGRES = PostgresFlavor()
SUB = cols(S, ops.SUB_COLS)
TOOL = cols(C, ops.TOOL_COLS)
NOW = p("now")


def _task_writes(f: Flavor) -> dict[str, ClauseElement]:
    by_id = T.c.id == p("t")
    ok = f.allowed(T.c.status)
    return {
        "NEXT_SEQ": update(T).where(by_id).values(event_seq=T.c.event_seq + p("n"), updated_at=NOW)
        .returning(T.c.event_seq, T.c.total_cost_usd),
        "INSERT_EVENT": insert(E).values(task_id=p("t"), seq=p("seq"), kind=p("kind"), data=p("data"),
                                           created_at=NOW),
        "INSERT_TASK": insert(T).values(
            id=p("id"), user_id=p("u"), prompt=p("p"), status=p("st"), priority=p("pr"), approve=p("ap"),
            budget_usd=p("b"), plan_in=p("plan"), context=p("ctx"), answer_max_tokens=p("amt"), rerun_of=p("ro"),
            tier_models=p("tm"), total_cost_usd=num(0), reserved_usd=num(0), cancel_requested=false(),
            event_seq=num(0), created_at=NOW, updated_at=NOW),
        "SET_STATUS_IF": update(T).where(by_id, ok).values(
            status=p("st"), error=func.coalesce(p("err"), T.c.error), result=func.coalesce(p("res"), T.c.result),
            end_reason=p("why"),
            started_at=case((p("exec", Boolean), func.coalesce(T.c.started_at, NOW)), else_=T.c.started_at),
            completed_at=case((p("term", Boolean), NOW), else_=T.c.completed_at), updated_at=NOW)
        .returning(T.c.id),
        "SET_PLANNER_MODEL": update(T).where(by_id).values(planner_model=p("m")),
        # read under a lock: a replan's count is read and written by one transaction at a time
        "TASK_REPLANS": select(T.c.status, T.c.replans).where(by_id).with_for_update(),
        "SET_REPLANS": update(T).where(by_id).values(replans=p("rp"), updated_at=NOW),
        "SAVE_PLAN": update(T).where(by_id, ok).values(
            reasoning=p("r"), plan_in=null(), prompt_versions=p("pv"), warnings=p("wn"), status=p("st"),
            planned_at=NOW, updated_at=NOW).returning(T.c.id),
        # The budget check and the reservation are one UPDATE: no row changes when it does not fit.
        "RESERVE_ON_TASK": update(T).where(by_id, T.c.total_cost_usd + T.c.reserved_usd + p("r")
                                           <= T.c.budget_usd + p("eps"))
        .values(reserved_usd=T.c.reserved_usd + p("r"), updated_at=NOW).returning(T.c.id),
        "SETTLE_TASK": update(T).where(by_id).values(
            reserved_usd=T.c.reserved_usd - p("r"), total_cost_usd=T.c.total_cost_usd + p("c"), updated_at=NOW),
        "MOVE_RESERVED": update(T).where(by_id).values(
            reserved_usd=num(0), total_cost_usd=T.c.total_cost_usd + p("spent"), updated_at=NOW),
        "REQUEST_CANCEL": update(T).where(by_id).values(cancel_requested=true()).returning(T.c.status),
        "SET_APPROVED": update(T).where(by_id).values(approve=true()),
        # the task row first, as a status write and a reservation take it: one lock order
        "LOCK_TASK": select(T.c.status).where(by_id).with_for_update(),
        # one user's reservations one at a time (daily budgets; SQLite's one writer needs no lock)
        "LOCK_USER": select(U.c.id).where(U.c.id == p("u")).with_for_update(),
    }


def _subtask_writes(f: Flavor) -> dict[str, ClauseElement]:
    one = and_(S.c.task_id == p("t"), S.c.index == p("i"))
    ok = f.allowed(S.c.status)
    done = and_(p("done", Boolean), ok)  # a settlement that completes the subtask, if it may
    return {
        "INSERT_SUBTASK": f.insert(S).values(
            id=p("id"), task_id=p("t"), index=p("i"), description=p("d"), tier_hint=p("th"),
            tier_assigned=p("ta"), models=p("ms"), model=p("m"), depends_on=p("deps"), status=p("st"),
            attempts=num(0), cost_usd=num(0), input_tokens=num(0), output_tokens=num(0), kind=p("k"),
            tools=p("tl"), tool=p("tn"), arguments=p("args"), optional_deps=p("od"), reused_from=p("rf"),
            result=p("res"), completed_at=p("ca"), round=p("rd"), end_reason=p("why"),
        ).on_conflict_do_nothing(index_elements=[S.c.id]),  # a retry after a lost commit adds nothing
        "REPLACE_PENDING": update(S).where(one, S.c.status == word(SubtaskStatus.pending)).values(
            description=p("d"), tier_hint=p("th"), tier_assigned=p("ta"), models=p("ms"), model=p("m"),
            depends_on=p("deps")).returning(*SUB),
        "END_SUBTASK": update(S).where(one, ok).values(
            status=p("st"), error=p("err"), end_reason=p("why"), completed_at=NOW).returning(*SUB),
        "MARK_RUNNING": update(S).where(one, ok).values(
            status=word(SubtaskStatus.running), attempts=p("att"), model=p("model"),
            started_at=func.coalesce(S.c.started_at, NOW)).returning(*SUB),
        "SETTLE_SUBTASK": update(S).where(S.c.task_id == p("t"), S.c.index == p("idx")).values(
            cost_usd=S.c.cost_usd + p("c"), input_tokens=S.c.input_tokens + p("i"),
            output_tokens=S.c.output_tokens + p("o"),
            status=case((done, word(SubtaskStatus.completed)), else_=S.c.status),
            result=case((done, cast(p("res"), Text)), else_=S.c.result),
            error=case((done, null()), else_=S.c.error),
            end_reason=case((done, cast(p("why"), Text)), else_=S.c.end_reason),
            completed_at=case((done, NOW), else_=S.c.completed_at)).returning(*SUB),
        "RESET_RUNNING": update(S).where(S.c.task_id == p("t"), S.c.status == p("running"))
        .values(status=p("pending")),
        "CANCEL_SUBTASKS": update(S).where(S.c.task_id == p("t"), ok).values(
            status=p("st"), error=p("err"), end_reason=p("why"), completed_at=NOW).returning(*SUB),
        "COMPLETE_SUBTASK": update(S).where(one, ok).values(
            status=word(SubtaskStatus.completed), result=p("res"), partial_reason=p("pr"), error=null(),
            end_reason=p("why"), completed_at=NOW).returning(*SUB),
        "MARK_ACTING": update(S).where(one, S.c.status.in_([p("pending"), p("aw")])).values(
            status=word(SubtaskStatus.running), started_at=func.coalesce(S.c.started_at, NOW)).returning(*SUB),
        "MARK_AWAITING": update(S).where(one, S.c.status.in_([p("pending"), p("running")])).values(
            status=p("aw"), started_at=func.coalesce(S.c.started_at, NOW)).returning(*SUB),
        "UNMARK_AWAITING": update(S).where(one, S.c.status == p("aw")).values(status=p("running"))
        .returning(*SUB),
    }


def _ledger_writes() -> dict[str, ClauseElement]:
    return {
        "INSERT_RESERVED": insert(L).values(
            task_id=p("t"), user_id=p("u"), kind=p("kind"), subtask_index=p("si"), tier=p("tier"),
            model=p("model"), attempt=p("att"), status=word(CallStatus.reserved), reserved_usd=p("r"),
            cost_usd=num(0), input_tokens=num(0), output_tokens=num(0), cache_read_tokens=num(0),
            cache_write_tokens=num(0), created_at=NOW).returning(L.c.id),
        "SETTLE_LEDGER": update(L).where(L.c.id == p("id"), L.c.status == p("open")).values(
            status=p("st"), cost_usd=p("c"), input_tokens=p("i"), output_tokens=p("o"), cache_read_tokens=p("cr"),
            cache_write_tokens=p("cw"), latency_ms=p("lat"), error=p("err"), answer=p("ans"), settled_at=NOW)
        .returning(L.c.id),
        "OPEN_ROWS": select(L.c.id, L.c.reserved_usd).where(L.c.task_id == p("t"), L.c.status == p("st")),
        "CLOSE_ROW": update(L).where(L.c.id == p("id")).values(
            status=p("st"), cost_usd=L.c.reserved_usd, settled_at=NOW, error=p("err")),
    }


def _tool_writes(f: Flavor) -> dict[str, ClauseElement]:
    def intent(*cleared: str) -> Any:
        """A call's row; a call sent again after a crash (same id: its idempotency key)
        starts over."""
        ins = f.insert(C).values(id=p("id"), task_id=p("t"), subtask_index=p("i"), turn=p("turn"),
                                 model_call_id=p("mid"), tool=p("tool"), arguments=p("args"), status=p("st"),
                                 started_at=NOW)
        return ins.on_conflict_do_update(index_elements=[C.c.id], set_={
            "status": ins.excluded.status, "started_at": ins.excluded.started_at,
            **dict.fromkeys(("result", "error", "completed_at", *cleared), null())}).returning(*TOOL)

    mine = and_(C.c.id == p("id"), C.c.task_id == p("t"))
    return {
        # the intent, written before the call is sent (design.md section 11)
        "TOOL_INTENT": intent(),
        # a call held for approval: its earlier decision, if any, goes
        "TOOL_HOLD": intent("decision", "decided_by", "decided_at", "decided_arguments", "decision_message"),
        "TOOL_END": update(C).where(mine).values(status=p("st"), result=p("res"), error=p("err"), completed_at=NOW)
        .returning(*TOOL),
        "TOOL_CALLS_UNKNOWN": update(C).where(C.c.task_id == p("t"), C.c.status == p("running")).values(
            status=p("unknown"), error=p("err"), completed_at=NOW).returning(*TOOL),
        # a decision applies only while the call awaits it
        "TOOL_DECIDE": update(C).where(mine, C.c.status == p("aw")).values(
            status=p("st"), decision=p("dec"), decided_by=p("by"), decided_at=NOW, decided_arguments=p("da"),
            decision_message=p("msg"), error=p("err"), completed_at=p("ca")).returning(*TOOL),
        "TOOL_CALL_STATUS": select(C.c.status).where(mine),
        "TOOL_CALLS": select(*TOOL).where(C.c.task_id == p("t"), C.c.subtask_index == p("i"))
        .order_by(C.c.started_at, C.c.id),
        "SNAP_TOOL_CALLS": select(*TOOL).where(C.c.task_id == p("t"))
        .order_by(C.c.subtask_index, C.c.started_at, C.c.id),
    }


def _reads(f: Flavor) -> dict[str, ClauseElement]:
    by_id = T.c.id == p("t")
    spent = case((L.c.status == word(CallStatus.reserved), L.c.reserved_usd), else_=L.c.cost_usd)
    # a task's calls by part (kind, subtask), model and whether booked at the worst case
    worst = case((L.c.status.in_([p("lost"), p("canceled")]), num(1)), else_=num(0))
    return {
        "SUBTASK": select(*SUB).where(S.c.task_id == p("t"), S.c.index == p("i")),
        "DAILY_SPENT": select(func.coalesce(func.sum(spent), num(0)))
        .where(L.c.user_id == p("u"), L.c.created_at >= p("day")),
        "BUDGET_LEFT": select(T.c.budget_usd - T.c.total_cost_usd - T.c.reserved_usd).where(by_id),
        "LOAD_TASK": select(*cols(T, ops.TASK_COLS)).where(by_id),
        "LOAD_SUBTASKS": select(*SUB).where(S.c.task_id == p("t")).order_by(S.c.index),
        "UNFINISHED": select(T.c.id).where(f.not_ended(T.c.status)).order_by(T.c.priority, T.c.created_at),
        "USER_DAILY_BUDGET": select(U.c.daily_budget_usd).where(U.c.id == p("u")),
        # OFFSET 0 written out: SQLite's compiler adds an OFFSET parameter of its own otherwise
        "EVENTS_AFTER": select(E.c.seq, E.c.kind, E.c.data).where(E.c.task_id == p("t"), E.c.seq > p("s"))
        .order_by(E.c.seq).limit(p("n")).offset(num(0)),
        "HEAD": select(T.c.id, T.c.user_id, T.c.status, T.c.event_seq).where(by_id),
        "SNAP_TASK": select(*cols(T, ops.SNAP_TASK_COLS)).where(by_id),
        "SNAP_SUBTASKS": select(*cols(S, ops.SNAP_SUB_COLS)).where(S.c.task_id == p("t")).order_by(S.c.index),
        "SNAP_LEDGER": select(
            L.c.kind, L.c.subtask_index, L.c.model, worst, func.coalesce(func.sum(L.c.cost_usd), num(0)),
            func.coalesce(func.sum(L.c.input_tokens + L.c.cache_read_tokens + L.c.cache_write_tokens), num(0)),
            func.coalesce(func.sum(L.c.output_tokens), num(0)), func.count(), func.max(L.c.id))
        .where(L.c.task_id == p("t")).group_by(L.c.kind, L.c.subtask_index, L.c.model, worst),
        "TASK_COUNTS": select(T.c.status, func.count()).group_by(T.c.status),
        "TOKEN": TOKEN_LOOKUP,
    }


def statements(f: Flavor) -> dict[str, ClauseElement]:
    """Every named statement, as a construct for this database."""
    return {**_task_writes(f), **_subtask_writes(f), **_ledger_writes(), **_tool_writes(f), **_reads(f)}


@cache
def compiled(f: Flavor) -> dict[str, str]:
    """Every named statement as its driver's text (once per process and database)."""
    dialect = f.dialect()
    out = {}
    for name, stmt in statements(f).items():
        c = stmt.compile(dialect=dialect)
        given = {k for k, v in c.params.items() if v is not None}
        if given:  # a value the statement would carry itself: ops would not pass it
            raise ValueError(f"{name}: parameters with values of their own: {sorted(given)}")
        out[name] = str(c)
    return out
