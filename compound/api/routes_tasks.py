"""/v1 routes: submit, read, list, cancel, approve tasks; validate plans."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from compound.api.auth import (
    BEARER_SECURITY,
    Principal,
    ReadPrincipal,
    SubmitPrincipal,
    authorize,
    bearer_token,
    owner_filter,
)
from compound.api.errors import COMMON_RESPONSES, ApiError
from compound.api.schemas import PlanValidateIn, PlanValidateOut, RerunIn, TaskCreate, TaskList, TaskOut
from compound.api.snapshots import Snapshot, etag_matches, version_of
from compound.api.state import AppState, app_state
from compound.core.errors import Conflict, NotFound, PlanInvalid, UserInputError
from compound.core.secrets import redact_data
from compound.planner.plan import critical_path, waves
from compound.planner.validate import is_clean_text, validate_plan
from compound.plugins import load_plugins
from compound.store.base import RunStore
from compound.store.models import TaskStatus
from compound.store.sqlrun import decode_cursor, encode_cursor
from compound.store.values import SubState, TaskState

router = APIRouter(prefix="/v1", tags=["tasks"], responses=COMMON_RESPONSES)


def store_of(request: Request) -> RunStore:
    return app_state(request.app).store


async def submit_task(request: Request, principal: Any, body: TaskCreate) -> TaskState:
    """Validate, rate-limit, store and hand a new task to the executor."""
    return await submit_to(app_state(request.app), principal, body)


async def submit_to(state: AppState, principal: Any, body: TaskCreate, *, context: list[dict[str, str]] | None = None,
                    answer_max_tokens: int | None = None, rerun_of: str | None = None,
                    tier_models: dict[str, list[str]] | None = None) -> TaskState:
    """submit_task on the app's state (the front doors call this too): `context` is a
    conversation's earlier messages, `answer_max_tokens` bounds the synthesis call."""
    settings = state.settings
    if len(body.prompt) > settings.max_prompt_chars:
        raise UserInputError(f"prompt: {len(body.prompt)} characters; at most {settings.max_prompt_chars} are accepted")
    if not body.prompt.strip():
        raise UserInputError("prompt: must not be blank")
    if not is_clean_text(body.prompt):
        raise UserInputError("prompt: contains a NUL character or a lone surrogate; send plain UTF-8 text")
    wait = state.ratelimit.check(principal.token_id)
    if wait is not None:
        raise ApiError(429, "rate_limited",
                       f"more than {settings.rate_limit_per_minute} submissions a minute with this token; "
                       f"retry in {int(wait)} s", {"Retry-After": str(int(wait))})
    plan_in = None
    if body.plan is not None:
        plan_in = validate_plan(body.plan, max_subtasks=settings.max_subtasks,
                                kinds=load_plugins(settings.plugins).kinds()).model_dump(mode="json")
    task: TaskState = await state.store.create_task(
        prompt=body.prompt, budget_usd=body.budget_usd or settings.default_budget_usd, user_id=principal.user_id,
        priority=body.priority, plan_in=plan_in, approve=body.approve, context=context,
        answer_max_tokens=answer_max_tokens, rerun_of=rerun_of, tier_models=tier_models)
    await state.executor.dispatch(task.id, priority=task.priority)
    return task


@router.post("/tasks", status_code=202, response_model=TaskOut,
             responses={429: {"description": "rate limited; see Retry-After"}},
             summary="Submit a request; planning and execution happen behind the 202")
async def post_task(request: Request, body: TaskCreate, principal: SubmitPrincipal) -> Any:
    task = await submit_task(request, principal, body)
    return redact_data(await store_of(request).snapshot(task.id))


@router.post("/tasks/{task_id}/rerun", status_code=202, response_model=TaskOut,
             responses={409: {"description": "the task has no plan yet and none was given"},
                        429: {"description": "rate limited; see Retry-After"}},
             summary="Run a task again, optionally with an edited plan or budget, reusing unchanged results",
             description="A new task with the earlier one's request. Each of its subtasks whose description, "
                         "tier, models and inputs (its dependencies' results) are unchanged reuses the earlier "
                         "result at no cost (`reused_from` in the snapshot); everything downstream of a change "
                         "runs again.")
async def rerun(request: Request, task_id: str, body: RerunIn, principal: SubmitPrincipal) -> Any:
    store = store_of(request)
    await store.head(task_id, user_id=owner_filter(principal))
    old = await store.load(task_id)
    if old is None:  # pragma: no cover - head found it a moment ago
        raise NotFound(f"no task with id {task_id[:80]!r}")
    models = chosen_models(body.models, request.app.state.settings.all_models())
    plan = body.plan if body.plan is not None else earlier_plan(old)
    if plan is None:
        raise Conflict(f"task {task_id} has no plan yet; give one in `plan`, or re-run it once it is planned")
    task = await submit_to(request.app.state, principal, TaskCreate(
        prompt=old.prompt, budget_usd=body.budget_usd or old.budget_usd, priority=old.priority, plan=plan),
        context=old.context, rerun_of=old.id, tier_models={**(old.tier_models or {}), **models} or None)
    return redact_data(await store.snapshot(task.id))


def chosen_models(models: dict[str, list[str]] | None, configured: list[str]) -> dict[str, list[str]]:
    """A re-run's `models`, checked: tiers "1".."3", non-empty lists of models this
    server is configured with (a user picks among them, never any model at all)."""
    if not models:
        return {}
    for tier, names in models.items():
        if tier not in ("1", "2", "3"):
            raise UserInputError(f"models: {tier[:20]!r} is not a tier; use \"1\", \"2\" or \"3\"")
        if not names:
            raise UserInputError(f"models: tier {tier} needs at least one model")
        unknown = [n for n in names if n not in configured]
        if unknown:
            raise UserInputError(f"models: {unknown[0][:80]!r} is not a model this server is configured with; "
                                 f"choose from {', '.join(configured)}")
    return {tier: list(dict.fromkeys(names)) for tier, names in models.items()}


def earlier_plan(old: TaskState) -> dict[str, Any] | None:
    """The plan a task ran (its subtasks), as PlanIn; None while it has none."""
    if not old.subtasks:
        return old.plan_in
    return {"reasoning": old.reasoning, "subtasks": [
        {"description": s.description, "tier_hint": s.tier_hint,
         "depends_on": [{"index": d, "required": False} if d in s.optional else d for d in s.depends_on],
         **_acting(s)}
        for s in old.subtasks]}


def _acting(s: SubState) -> dict[str, Any]:
    """A subtask's section 11 fields, as its plan wrote them (none for a plain model subtask)."""
    out: dict[str, Any] = {"kind": s.kind} if s.kind != "llm" else {}
    if s.tools:
        out["tools"] = list(s.tools)
    if s.tool is not None:
        out["tool"] = s.tool
    if s.arguments is not None:
        out["arguments"] = dict(s.arguments)
    return out


MAX_SEQ = 10**18 - 1  # the most digits `since` may have (the store's sequences are 64-bit)


def _query_param(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": kind, **({"exclusiveMinimum": 0, "maximum": 30} if name == "wait" else
                                        {"minimum": 0, "maximum": MAX_SEQ})}}


GET_ONE_PARAMS = [
    _query_param("wait", "number", "long-poll: answer as soon as the task changes after the version the "
                 "client holds (If-None-Match, or `since`), else after this many seconds (0 < wait <= 30)"),
    _query_param("since", "integer", "the event sequence the client holds (its ETag without quotes); "
                 "an alternative to If-None-Match for `wait`"),
    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "an ETag of this task: 304 while the task is unchanged"},
]


def read_wait(query: Mapping[str, str]) -> tuple[float | None, int | None]:
    """`wait` and `since` from a query string, or UserInputError naming the bad one."""
    wait = since = None
    if "wait" in query:
        try:
            wait = float(query["wait"])
        except ValueError:
            wait = math.nan
        if not 0 < wait <= 30:  # NaN fails too
            raise UserInputError(f"wait: {query['wait'][:40]!r} is not a number of seconds in (0, 30]")
    if "since" in query:
        raw = query["since"]
        if not (raw.isascii() and raw.isdigit() and int(raw) <= MAX_SEQ):
            raise UserInputError(f"since: {raw[:40]!r} is not an event sequence (an integer >= 0)")
        since = int(raw)
    return wait, since


# The hot read path: auth and parameters are read here rather than by FastAPI's
# dependency solver (which cost more than the rest of the request), and the body is
# the snapshot serialized once, not validated per request; the schema, parameters and
# security below document it all the same.
@router.get("/tasks/{task_id}", response_model=TaskOut,
            responses={200: {"headers": {"ETag": {"description": "the task's event sequence, quoted",
                                                  "schema": {"type": "string"}}}},
                       304: {"description": "unchanged since the ETag sent in If-None-Match"}},
            openapi_extra={"parameters": GET_ONE_PARAMS, "security": BEARER_SECURITY},
            summary="A task's progress: status, plan, each subtask's state, result and cost")
async def get_one(request: Request, task_id: str) -> Response:
    return await read_one(request, task_id)


async def read_one(request: Request, task_id: str) -> Response:
    """GET /v1/tasks/{id}'s work: the route's, and FastTaskReads' before the framework."""
    principal = await authorize(request, bearer_token(request), "read")
    wait, since = read_wait(request.query_params)
    if_none_match = request.headers.get("if-none-match")
    snap = await _owned_snapshot(request, task_id, principal)
    held = since if since is not None else version_of(if_none_match)
    if wait is not None and held is not None and held == snap.seq and not snap.terminal:
        snap = await app_state(request.app).snapshots.changed(task_id, after=held, timeout=wait)
    headers = {"ETag": snap.etag}
    if if_none_match is not None and etag_matches(if_none_match, snap.etag):
        return Response(status_code=304, headers=headers)
    return Response(snap.body, media_type="application/json", headers=headers)


async def _owned_snapshot(request: Request, task_id: str, principal: Principal) -> Snapshot:
    snap: Snapshot = await app_state(request.app).snapshots.get(task_id)
    owner = owner_filter(principal)
    if owner is not None and snap.user_id != owner:
        raise NotFound(f"no task with id {task_id[:80]!r}")  # exactly as an unknown id
    return snap


# A page's cursor: the last task's creation time (microseconds since 1970, UTC) and id,
# `<micros>.<id>`. Every value of this shape names a place in the list (a keyset), so
# the description says exactly what is accepted; anything else is refused with 422.
CURSOR_PATTERN = r"^(?:[0-9]{1,16}\.[A-Za-z0-9_\-]{1,64})?$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def page_cursor(store_cursor: str | None) -> str | None:
    """The store's cursor as this API gives it out."""
    if store_cursor is None:
        return None
    at, task_id = decode_cursor(store_cursor)
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return f"{(at - _EPOCH) // timedelta(microseconds=1)}.{task_id}"


def store_cursor(cursor: str | None) -> str | None:
    """A cursor of CURSOR_PATTERN (checked by the route) as the store takes it."""
    if not cursor:
        return None
    micros, task_id = cursor.split(".", 1)
    return encode_cursor(_EPOCH + timedelta(microseconds=int(micros)), task_id)


@router.get("/tasks", response_model=TaskList,  summary="Recent tasks, newest first")
async def get_many(
    request: Request,
    principal: ReadPrincipal,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[TaskStatus | None, Query(description="only tasks in this status")] = None,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description=(
        "next_cursor of the previous page (the tasks after it); empty means the first page; a value not of "
        "this shape is refused with 422"))] = None,
) -> Any:
    tasks, next_cursor = await store_of(request).list_tasks(
        user_id=owner_filter(principal), limit=limit, status=status.value if status else None,
        cursor=store_cursor(cursor))
    return {"tasks": tasks, "next_cursor": page_cursor(next_cursor)}


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut, responses={409: {"description": "already finished"}},
             summary="Stop in-flight calls and cancel the rest")
async def cancel(request: Request, task_id: str, principal: SubmitPrincipal) -> Any:
    store = store_of(request)
    await store.head(task_id, user_id=owner_filter(principal))
    await app_state(request.app).executor.cancel(task_id)
    return redact_data(await store.snapshot(task_id))


@router.post("/tasks/{task_id}/approve", response_model=TaskOut,
             responses={409: {"description": "not waiting for approval"}},
             summary="Start a task held at `planned`")
async def approve(request: Request, task_id: str, principal: SubmitPrincipal) -> Any:
    store = store_of(request)
    await store.head(task_id, user_id=owner_filter(principal))
    await app_state(request.app).executor.approve(task_id)
    return redact_data(await store.snapshot(task_id))


@router.post("/plans/validate", response_model=PlanValidateOut,
             summary="Check a plan: every error, its waves, critical path and worst-case cost",
             description="The body is `{\"plan\": PlanIn}` or the bare PlanIn (the output of `compound plan --json`).")
async def validate(request: Request, body: PlanValidateIn, _: ReadPrincipal) -> Any:
    settings = app_state(request.app).settings
    try:
        plan = validate_plan(body.the_plan(), max_subtasks=settings.max_subtasks,
                             kinds=load_plugins(settings.plugins).kinds())
    except PlanInvalid as exc:
        return {"valid": False, "errors": exc.errors, "waves": [], "critical_path": [],
                "estimated_cost_usd": None}
    from compound.planner.estimate import estimate_cost

    deps = plan.deps()
    cost = estimate_cost(plan, settings, app_state(request.app).executor.price_of)
    return {"valid": True, "errors": [], "waves": waves(deps), "critical_path": critical_path(deps),
            "estimated_cost_usd": cost}


TASK_PATH = "/v1/tasks/"


class FastTaskReads:
    """GET /v1/tasks/{id}, the path every poller hits, answered ahead of the framework's
    layers (the exception and routing middleware, the route's request handler: about
    half of such a request's CPU, and under load the HTTP loop's time goes mostly to
    polls). It runs the route's own code (read_one); whatever that raises (a missing
    token, another user's task, a bad `wait`) is left to the route, which answers it
    in the API's error shape. The route stays what OpenAPI documents."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(TASK_PATH):
            task_id = scope["path"][len(TASK_PATH):]
            if task_id and "/" not in task_id:
                try:
                    response = await read_one(Request(scope, receive), task_id)
                except Exception:  # the route answers it, in the API's error shape
                    pass
                else:
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
