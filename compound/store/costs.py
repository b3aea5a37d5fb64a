"""Spend from the ledger, computed in SQL: totals and groups by day, model, tier or
user, and today / this week / this month for the dashboard."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, case, cast, func, literal, select
from sqlalchemy.engine import Engine

from compound.store.models import LedgerEntry, User, utcnow

L = LedgerEntry.__table__  # type: ignore[attr-defined]
U = User.__table__  # type: ignore[attr-defined]
GROUPS = ("day", "model", "tier", "user")


def _day(engine: Engine) -> Any:
    if engine.dialect.name == "sqlite":
        return func.substr(L.c.created_at, 1, 10)
    return func.to_char(func.timezone("UTC", L.c.created_at), "YYYY-MM-DD")


def costs(engine: Engine, *, since: datetime, until: datetime, group_by: str | None,
          user_id: str | None) -> dict[str, Any]:
    """user_id None: every user's calls (admin)."""
    where = [L.c.created_at >= since, L.c.created_at < until]
    if user_id is not None:
        where.append(L.c.user_id == user_id)
    metrics = [func.coalesce(func.sum(L.c.cost_usd), 0.0), func.count(),
               func.coalesce(func.sum(L.c.input_tokens + L.c.cache_read_tokens + L.c.cache_write_tokens), 0),
               func.coalesce(func.sum(L.c.output_tokens), 0)]
    with engine.connect() as conn:
        total = conn.execute(select(*metrics).where(*where)).one()
        groups: list[dict[str, Any]] = []
        if group_by is not None:
            if group_by == "day":
                key: Any = _day(engine)
                q = select(key.label("k"), *metrics).where(*where)
            elif group_by == "model":
                key = L.c.model
                q = select(key.label("k"), *metrics).where(*where)
            elif group_by == "tier":
                key = case((L.c.kind == "planner", literal("planner")),
                           else_=literal("tier ") + cast(L.c.tier, String))
                q = select(key.label("k"), *metrics).where(*where)
            elif group_by == "user":
                key = func.coalesce(U.c.name, literal("(no user)"))
                q = select(key.label("k"), *metrics).select_from(L.outerjoin(U, U.c.id == L.c.user_id)).where(*where)
            else:
                raise ValueError(group_by)
            for k, cost, calls, inp, out in conn.execute(q.group_by(key).order_by(key)):
                groups.append({"key": k, "cost_usd": float(cost), "calls": int(calls),
                               "input_tokens": int(inp), "output_tokens": int(out)})
    return {"total_usd": float(total[0]), "calls": int(total[1]), "input_tokens": int(total[2]),
            "output_tokens": int(total[3]), "groups": groups}


def spend_summary(engine: Engine, *, user_id: str | None) -> dict[str, float]:
    now = utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - timedelta(days=day.weekday())
    month = day.replace(day=1)
    out = {}
    for name, since in (("today_usd", day), ("week_usd", week), ("month_usd", month)):
        out[name] = costs(engine, since=since, until=now + timedelta(seconds=1), group_by=None,
                          user_id=user_id)["total_usd"]
    return out


def task_tokens(engine: Engine, task_id: str) -> tuple[int, int]:
    """(input, output) tokens of every call the task made: planner, subtasks, synthesis."""
    q = select(func.coalesce(func.sum(L.c.input_tokens), 0), func.coalesce(func.sum(L.c.output_tokens), 0)) \
        .where(L.c.task_id == task_id)
    with engine.connect() as conn:
        row = conn.execute(q).one()
    return int(row[0]), int(row[1])
