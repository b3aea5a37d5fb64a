"""The Symbiont-style routes (seed 004) with their response shapes, behind tokens.
The seed left progress open; with COMPOUND_OPEN_SYMBIONT_READS a client without a
token may read one task's progress by its id (the id is the secret). The recent list
always needs a token, and no token is ever the admin view."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials

from compound.api.auth import bearer, owner_filter, principal_from
from compound.api.errors import COMMON_RESPONSES, ApiError
from compound.api.routes_tasks import store_of, submit_task
from compound.api.schemas import (
    CompoundTaskRequest,
    CompoundTaskResponse,
    TaskCreate,
    TaskProgressResponse,
    TaskSummary,
)
from compound.api.state import app_state
from compound.core.secrets import redact_data

router = APIRouter(tags=["compound tasks (Symbiont-style)"], responses=COMMON_RESPONSES)
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def _reader(request: Request, creds: HTTPAuthorizationCredentials | None, *, by_id: bool = False) -> str | None:
    """The owner filter for a read. Open reads (a setting) let a client without a token
    read one task by id only; with a token it is always that user's view."""
    if by_id and creds is None and app_state(request.app).settings.open_symbiont_reads:
        return None
    principal = await principal_from(request, creds.credentials if creds else None)
    if "read" not in principal.scopes and not principal.is_admin:
        raise ApiError(403, "forbidden", "this token lacks the 'read' scope")
    return owner_filter(principal)


@router.post("/task/compound", response_model=CompoundTaskResponse, responses={429: {"description": "rate limited"}},
             summary="Submit a compound task; answers once it is planned, with its subtask count")
async def create_compound_task(request: Request, body: CompoundTaskRequest, creds: Creds) -> Any:
    token = creds.credentials if creds else body.token
    principal = await principal_from(request, token)
    if "submit" not in principal.scopes and not principal.is_admin:
        raise ApiError(403, "forbidden", "this token lacks the 'submit' scope")
    task = await submit_task(request, principal, TaskCreate(prompt=body.prompt, budget_usd=body.budget_usd))
    with contextlib.suppress(TimeoutError):  # still planning: answer with what there is
        await app_state(request.app).executor.wait_planned(task.id, timeout=120)
    snap = await store_of(request).snapshot(task.id)
    return {"id": snap["id"], "status": snap["status"], "subtask_count": len(snap["subtasks"])}


@router.get("/task/{task_id}/progress", response_model=TaskProgressResponse,
            summary="A compound task's progress with every subtask")
async def task_progress(request: Request, task_id: str, creds: Creds) -> Any:
    snap = redact_data(await store_of(request).snapshot(task_id, user_id=await _reader(request, creds, by_id=True)))
    return {
        "id": snap["id"], "prompt": snap["prompt"], "status": snap["status"],
        "reasoning": snap["reasoning"] or "",
        "subtasks": [
            {"id": f"{snap['id']}:{s['index']}", "index": s["index"], "description": s["description"],
             "tier_hint": s["tier_hint"], "tier_assigned": s["tier_assigned"], "model": s["model"],
             "depends_on": s["depends_on"], "status": s["status"], "result": s["result"],
             "cost": s["cost_usd"], "started_at": s["started_at"], "completed_at": s["completed_at"]}
            for s in snap["subtasks"]
        ],
        "created_at": snap["created_at"] or "", "planned_at": snap["planned_at"] or "",
        "completed_at": snap["completed_at"], "total_cost": snap["total_cost_usd"],
        "result": snap["result"], "error": snap["error"],
    }


@router.get("/tasks/recent", response_model=list[TaskSummary], summary="Recent compound tasks, newest first")
async def recent_tasks(request: Request, creds: Creds,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Any:
    tasks, _ = await store_of(request).list_tasks(user_id=await _reader(request, creds), limit=limit)
    return [
        {"id": t["id"], "prompt": t["prompt"], "status": t["status"], "subtask_count": t["subtasks_total"],
         "completed_count": t["subtasks_done"], "total_cost": t["total_cost_usd"],
         "created_at": t["created_at"] or "", "completed_at": t["completed_at"]}
        for t in tasks
    ]
