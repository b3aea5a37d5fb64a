"""What both SQL stores share beyond ops.py: ids, token checks, and the listing and
cost reads built with SQLAlchemy Core (each store runs them on its own driver). Money
read here is rounded as every view shows it (core/money.py shown_usd)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, and_, case, cast, func, literal, or_, select
from sqlalchemy.sql import Select

from compound.core.errors import UserInputError
from compound.core.money import shown_usd
from compound.store.models import CallKind, LedgerEntry, Subtask, SubtaskStatus, Task, User, new_id, utcnow
from compound.store.ops import iso, parse_dt
from compound.store.ops_reads import period_starts
from compound.store.statements import Flavor
from compound.store.values import Principal

if TYPE_CHECKING:
    from compound.store.base import RunStore

T = Task.__table__  # type: ignore[attr-defined]
S = Subtask.__table__  # type: ignore[attr-defined]
L = LedgerEntry.__table__  # type: ignore[attr-defined]
U = User.__table__  # type: ignore[attr-defined]
GROUP_BY = ("day", "model", "tier", "user")


def new_task_id() -> str:
    return new_id("t")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token(token: str, found: tuple[str, Principal] | None) -> Principal | None:
    """The principal when the stored hash matches the token's (in constant time)."""
    if found is None:
        return None
    stored, principal = found
    return principal if secrets.compare_digest(stored, hash_token(token)) else None


def encode_cursor(created_at: datetime, task_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), task_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, task_id = json.loads(raw)
        return datetime.fromisoformat(at), str(task_id)
    except (ValueError, TypeError) as exc:
        raise UserInputError("cursor: not a cursor this server gave out; use next_cursor as returned") from exc


class ReadQueries:
    """Listing and cost statements for one database (its statements.Flavor)."""

    def __init__(self, flavor: Flavor) -> None:
        self.flavor = flavor

    def _at(self, value: datetime) -> Any:
        if self.flavor.name == "sqlite":  # run through SQLAlchemy, whose type converts it
            return value
        return value.astimezone(UTC).replace(tzinfo=None)  # naive UTC, as stored

    def list_tasks(self, *, user_id: str | None, limit: int, status: str | None, cursor: str | None) -> Select[Any]:
        done = func.sum(func.cast(S.c.status == SubtaskStatus.completed, T.c.priority.type))
        counts = (select(S.c.task_id, func.count().label("n"), done.label("done"))
                  .group_by(S.c.task_id).subquery())
        q = (select(T.c.id, T.c.prompt, T.c.status, T.c.total_cost_usd, T.c.budget_usd, T.c.created_at,
                    T.c.completed_at, T.c.priority, counts.c.n, counts.c.done)
             .select_from(T.outerjoin(counts, counts.c.task_id == T.c.id)))
        if user_id is not None:
            q = q.where(T.c.user_id == user_id)
        if status is not None:
            q = q.where(T.c.status == status)
        if cursor:
            at, last_id = decode_cursor(cursor)
            at = self._at(at)
            q = q.where(or_(T.c.created_at < at, and_(T.c.created_at == at, T.c.id < last_id)))
        return q.order_by(T.c.created_at.desc(), T.c.id.desc()).limit(limit + 1)

    @staticmethod
    def list_page(rows: list[Any], limit: int) -> tuple[list[dict[str, Any]], str | None]:
        more = len(rows) > limit
        rows = rows[:limit]
        out = [
            {"id": r[0], "prompt": r[1], "status": r[2], "priority": r[7],
             "subtasks_total": int(r[8] or 0), "subtasks_done": int(r[9] or 0),
             "total_cost_usd": shown_usd(r[3]), "budget_usd": shown_usd(r[4]),
             "created_at": iso(parse_dt(r[5])), "completed_at": iso(parse_dt(r[6]))}
            for r in rows
        ]
        last = parse_dt(rows[-1][5]) if rows else None
        next_cursor = encode_cursor(last, rows[-1][0]) if more and last is not None else None
        return out, next_cursor

    def costs(self, *, since: datetime, until: datetime, group_by: str | None,
              user_id: str | None) -> tuple[Select[Any], Select[Any] | None]:
        """The total statement, and the groups' (user_id None: every user's calls)."""
        where = [L.c.created_at >= self._at(since), L.c.created_at < self._at(until)]
        if user_id is not None:
            where.append(L.c.user_id == user_id)
        metrics = [func.coalesce(func.sum(L.c.cost_usd), 0.0), func.count(),
                   func.coalesce(func.sum(L.c.input_tokens + L.c.cache_read_tokens + L.c.cache_write_tokens), 0),
                   func.coalesce(func.sum(L.c.output_tokens), 0)]
        total = select(*metrics).where(*where)
        if group_by is None:
            return total, None
        if group_by == "day":
            key: Any = self.flavor.day(L.c.created_at)
            q = select(key.label("k"), *metrics).where(*where)
        elif group_by == "model":
            key = L.c.model
            q = select(key.label("k"), *metrics).where(*where)
        elif group_by == "tier":
            # the planner's and the synthesis's calls are parts of their own, beside the tiers' subtasks
            key = case((L.c.kind == CallKind.planner.value, literal("planner")),
                       (L.c.kind == CallKind.synthesis.value, literal("synthesis")),
                       else_=literal("tier ") + cast(L.c.tier, String))
            q = select(key.label("k"), *metrics).where(*where)
            # in the order a task spends: the planner, the tiers, the synthesis
            place = func.max(case((L.c.kind == CallKind.planner.value, 0),
                                  (L.c.kind == CallKind.synthesis.value, 2), else_=1))
            return total, q.group_by(key).order_by(place, key)
        elif group_by == "user":
            key = func.coalesce(U.c.name, literal("(no user)"))
            q = select(key.label("k"), *metrics).select_from(L.outerjoin(U, U.c.id == L.c.user_id)).where(*where)
        else:
            raise UserInputError(f"group_by: {group_by!r}; choose from {', '.join(GROUP_BY)}")
        return total, q.group_by(key).order_by(key)

    @staticmethod
    def task_tokens(task_id: str) -> Select[Any]:
        """(input, output) tokens of every call of the task: planner, subtasks, synthesis."""
        return select(func.coalesce(func.sum(L.c.input_tokens), 0),
                      func.coalesce(func.sum(L.c.output_tokens), 0)).where(L.c.task_id == task_id)

    @staticmethod
    def ledger_rows(task_id: str) -> tuple[Select[Any], list[str]]:
        """A task's ledger, oldest first, and its column names."""
        names = [c.name for c in L.columns]
        return select(*L.columns).where(L.c.task_id == task_id).order_by(L.c.id), names

    @staticmethod
    def costs_shape(total: list[Any], groups: list[Any]) -> dict[str, Any]:
        t = total[0]
        return {"total_usd": shown_usd(t[0]), "calls": int(t[1]), "input_tokens": int(t[2]),
                "output_tokens": int(t[3]),
                "groups": [{"key": k, "cost_usd": shown_usd(c), "calls": int(n), "input_tokens": int(i),
                            "output_tokens": int(o)} for k, c, n, i, o in groups]}

    @staticmethod
    async def spend_summary(store: RunStore, *, user_id: str | None) -> dict[str, float]:
        now = utcnow()
        out = {}
        for name, since in period_starts(now).items():
            got = await store.costs(since=since, until=now + timedelta(seconds=1), group_by=None, user_id=user_id)
            out[name] = shown_usd(got["total_usd"])
        return out
