"""Live progress and money: SSE per task, /v1/costs, /dashboard, /metrics."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse

from compound.api.auth import ReadPrincipal, bearer, owner_filter, principal_from
from compound.api.errors import COMMON_RESPONSES
from compound.api.metrics import MetricsObserver, TaskCollector
from compound.api.routes_tasks import store_of
from compound.api.schemas import DATE, DATE_TIME, CostsOut, SpendSummary, When
from compound.core.errors import UserInputError
from compound.core.secrets import redact_data
from compound.store.models import TERMINAL_TASK, utcnow

router = APIRouter(tags=["live"], responses=COMMON_RESPONSES)
STATIC = Path(__file__).parent / "static"


@router.get("/v1/tasks/{task_id}/events", summary="Server-Sent Events: one per state change, until the task ends",
            responses={200: {"content": {"text/event-stream": {}}, "description":
                             "events `task` and `subtask` with id = sequence number; resume with Last-Event-ID"}})
async def task_events(request: Request, task_id: str, principal: ReadPrincipal,
                      last_event_id: Annotated[str | None, Header(
                          alias="Last-Event-ID", pattern=EVENT_ID_PATTERN,
                          description="resume after this event id; empty, `null` or `undefined` replays from "
                          "the start; anything else is a 422")] = None) -> Any:
    store = store_of(request)
    head = await store.head(task_id, user_id=owner_filter(principal))
    after = _event_id(last_event_id)
    if head.status in TERMINAL_TASK and after >= head.event_seq:
        # Reconnecting at or past the last event: nothing more will come. 204 tells an
        # EventSource to stop reconnecting.
        return Response(status_code=204)

    async def stream() -> Any:
        # Replays the events past `after`, then waits on pushed events: no reads while
        # nothing changes. sse-starlette ends this when the client goes away.
        async with store.subscribe(task_id, after=after) as sub:
            async for ev in sub:
                yield {"id": str(ev.seq), "event": ev.kind, "data": json.dumps(redact_data(ev.data))}
                if ev.terminal:
                    return

    return EventSourceResponse(stream(), ping=15)


# An event id (at most 18 digits: the store's sequences are 64-bit), or a client's
# placeholder for "none yet"; surrounding blanks are allowed.
EVENT_ID_PATTERN = r"^\s*(?:[0-9]{1,18}|null|undefined)?\s*$"


def _event_id(value: str | None) -> int:
    """Last-Event-ID (EVENT_ID_PATTERN, checked by the route): an id this server sent;
    absent, empty or a client's placeholder (`null`, `undefined`) replays from the start."""
    value = (value or "").strip()
    if value in ("", "null", "undefined"):
        return 0
    try:
        return int(value)
    except ValueError:
        raise UserInputError("Last-Event-ID: must be the integer id of an event") from None


_DATE = re.compile(DATE)
_DATE_TIME = re.compile(DATE_TIME)
_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _when(value: str | None, default: datetime, *, end: bool = False) -> datetime:
    """`since`/`until` (WHEN_SCHEMA) in UTC. A date alone is its first instant, or as
    `until` its last (the next day's start, exclusive); a time without an offset is
    UTC; a leap second is the second before it; an instant past the calendar's ends
    is its end."""
    if not value:  # absent or empty (`?until=`): the default
        return default
    name = "until" if end else "since"
    try:
        if _DATE.fullmatch(value):
            d = date.fromisoformat(value)
            if end:
                return _LATEST if d == date.max else datetime.combine(d + timedelta(days=1), time(), tzinfo=UTC)
            return datetime.combine(d, time(), tzinfo=UTC)
        if not _DATE_TIME.fullmatch(value):
            raise ValueError(value)
        text = value.upper().replace("Z", "+00:00")
        if text[17:19] == "60":  # a leap second: Python's datetime has none
            text = text[:17] + "59" + text[19:]
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UserInputError(f"{name}: {value[:40]!r} is not an ISO date (2026-11-22) or date-time "
                             "(2026-11-22T10:00:00Z)") from None
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:  # an offset that takes it past year 1 or 9999
        return _LATEST if at.year > 1 else _EARLIEST


@router.get("/v1/costs", summary="Spend from the ledger, with totals and groups", response_model=CostsOut)
async def get_costs(
    request: Request,
    principal: ReadPrincipal,
    since: Annotated[When, Query(description="ISO date or date-time (UTC unless an offset is given); "
                                 "default 30 days ago")] = None,
    until: Annotated[When, Query(description="ISO date (inclusive) or date-time (exclusive); default now; "
                                 "at or before `since`, the range is empty")] = None,
    group_by: Annotated[Literal["day", "model", "tier", "user"] | None, Query()] = None,
) -> dict[str, Any]:
    now = utcnow()
    start = _when(since, now - timedelta(days=30))
    stop = _when(until, now + timedelta(seconds=1), end=True)
    if stop <= start:  # an empty range: nothing was spent in it
        out: dict[str, Any] = {"total_usd": 0.0, "calls": 0, "input_tokens": 0, "output_tokens": 0, "groups": []}
    else:
        out = await store_of(request).costs(since=start, until=stop, group_by=group_by,
                                            user_id=owner_filter(principal))
    return {"since": start.isoformat().replace("+00:00", "Z"), "until": stop.isoformat().replace("+00:00", "Z"),
            "group_by": group_by, **out}


@router.get("/v1/costs/summary", summary="Spend today, this week and this month, and the daily budget",
            response_model=SpendSummary)
async def get_summary(request: Request, principal: ReadPrincipal) -> dict[str, Any]:
    store = store_of(request)
    out: dict[str, Any] = await store.spend_summary(user_id=owner_filter(principal))
    out["daily_budget_usd"] = await store.user_daily_budget(principal.user_id,
                                                            request.app.state.settings.user_daily_budget_usd)
    out["user"] = principal.user_name
    out["admin"] = principal.is_admin  # the dashboard shows the cost per user to an admin
    return out


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse((STATIC / "dashboard.html").read_text(encoding="utf-8"))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    if not request.app.state.settings.public_metrics:
        creds = await bearer(request)
        await principal_from(request, creds.credentials if creds else None)
    request.app.state.task_counts.counts = await store_of(request).task_counts()
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.state.metrics = MetricsObserver(registry)
    app.state.task_counts = TaskCollector()
    registry.register(app.state.task_counts)
    app.include_router(router)
