"""/v1 routes: submit, read, list, cancel, approve tasks; validate plans."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from compound.api.auth import ReadPrincipal, SubmitPrincipal, owner_filter
from compound.api.errors import COMMON_RESPONSES, ApiError
from compound.api.schemas import PlanValidateIn, PlanValidateOut, TaskCreate, TaskList, TaskOut
from compound.core.errors import PlanInvalid, UserInputError
from compound.planner.plan import critical_path, waves
from compound.planner.validate import is_clean_text, validate_plan
from compound.store.base import RunStore, TaskState
from compound.store.models import TaskStatus

router = APIRouter(prefix="/v1", tags=["tasks"], responses=COMMON_RESPONSES)


def store_of(request: Request) -> RunStore:
    store: RunStore = request.app.state.store
    return store


async def submit_task(request: Request, principal: Any, body: TaskCreate) -> TaskState:
    """Validate, rate-limit, store and hand a new task to the executor."""
    return await submit_to(request.app.state, principal, body)


async def submit_to(state: Any, principal: Any, body: TaskCreate, *, context: list[dict[str, str]] | None = None,
                    answer_max_tokens: int | None = None) -> TaskState:
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
        plan_in = validate_plan(body.plan, max_subtasks=settings.max_subtasks).model_dump(mode="json")
    task: TaskState = await state.store.create_task(
        prompt=body.prompt, budget_usd=body.budget_usd or settings.default_budget_usd, user_id=principal.user_id,
        priority=body.priority, plan_in=plan_in, approve=body.approve, context=context,
        answer_max_tokens=answer_max_tokens)
    state.executor.submit(task.id)
    return task


@router.post("/tasks", status_code=202, response_model=TaskOut,
             responses={429: {"description": "rate limited; see Retry-After"}},
             summary="Submit a request; planning and execution happen behind the 202")
async def post_task(request: Request, body: TaskCreate, principal: SubmitPrincipal) -> Any:
    task = await submit_task(request, principal, body)
    return await store_of(request).snapshot(task.id)


@router.get("/tasks/{task_id}", response_model=TaskOut,
            summary="A task's progress: status, plan, each subtask's state, result and cost")
async def get_one(request: Request, task_id: str, principal: ReadPrincipal) -> Any:
    return await store_of(request).snapshot(task_id, user_id=owner_filter(principal))


@router.get("/tasks", response_model=TaskList,  summary="Recent tasks, newest first")
async def get_many(
    request: Request,
    principal: ReadPrincipal,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[TaskStatus | None, Query(description="only tasks in this status")] = None,
    cursor: Annotated[str | None, Query(max_length=500, description=(
        "next_cursor of the previous page; empty means the first page; a value this server did not give "
        "out is refused with 422"))] = None,
) -> Any:
    tasks, next_cursor = await store_of(request).list_tasks(user_id=owner_filter(principal), limit=limit,
                                                            status=status.value if status else None, cursor=cursor)
    return {"tasks": tasks, "next_cursor": next_cursor}


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut, responses={409: {"description": "already finished"}},
             summary="Stop in-flight calls and cancel the rest")
async def cancel(request: Request, task_id: str, principal: SubmitPrincipal) -> Any:
    store = store_of(request)
    await store.head(task_id, user_id=owner_filter(principal))
    await request.app.state.executor.cancel(task_id)
    return await store.snapshot(task_id)


@router.post("/tasks/{task_id}/approve", response_model=TaskOut,
             responses={409: {"description": "not waiting for approval"}},
             summary="Start a task held at `planned`")
async def approve(request: Request, task_id: str, principal: SubmitPrincipal) -> Any:
    store = store_of(request)
    await store.head(task_id, user_id=owner_filter(principal))
    await request.app.state.executor.approve(task_id)
    return await store.snapshot(task_id)


@router.post("/plans/validate", response_model=PlanValidateOut,
             summary="Check a plan: every error, its waves, critical path and worst-case cost",
             description="The body is `{\"plan\": PlanIn}` or the bare PlanIn (the output of `compound plan --json`).")
async def validate(request: Request, body: PlanValidateIn, _: ReadPrincipal) -> Any:
    settings = request.app.state.settings
    try:
        plan = validate_plan(body.the_plan(), max_subtasks=settings.max_subtasks)
    except PlanInvalid as exc:
        return {"valid": False, "errors": exc.errors, "waves": [], "critical_path": [],
                "estimated_cost_usd": None}
    from compound.planner.estimate import estimate_cost

    deps = plan.deps()
    cost = estimate_cost(plan, settings, request.app.state.executor.price_of)
    return {"valid": True, "errors": [], "waves": waves(deps), "critical_path": critical_path(deps),
            "estimated_cost_usd": cost}
