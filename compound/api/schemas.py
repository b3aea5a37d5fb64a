"""The API's request and response shapes (the tables are never the API shape)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compound.planner.plan import PlanIn

EXAMPLE_PLAN = PlanIn.model_config["json_schema_extra"]["example"]  # type: ignore[index]


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "Compare SQLite and PostgreSQL for a small team and recommend one", "budget_usd": 0.5},
        {"prompt": "Run my plan", "plan": EXAMPLE_PLAN, "priority": 1},
    ]})

    prompt: str = Field(min_length=1, description="the request, in natural language")
    budget_usd: float | None = Field(default=None, gt=0, le=10_000, description="hard cap in USD")
    priority: int = Field(default=2, ge=0, le=3, description="0 = most urgent .. 3 = least")
    plan: dict[str, Any] | None = Field(default=None, description="a PlanIn to run instead of decomposing")
    approve: bool = Field(default=True, description="false: stop at `planned` until approved")


class PlannerInfo(BaseModel):
    model: str | None
    cost_usd: float
    input_tokens: int
    output_tokens: int


class SubtaskOut(BaseModel):
    index: int
    description: str
    tier_hint: int
    tier_assigned: int | None
    model: str | None
    depends_on: list[int]
    status: str
    result: str | None
    error: str | None
    attempts: int
    cost_usd: float
    input_tokens: int
    output_tokens: int
    started_at: str | None
    completed_at: str | None


class TaskOut(BaseModel):
    id: str
    prompt: str
    status: str
    reasoning: str | None
    result: str | None
    error: str | None
    budget_usd: float
    total_cost_usd: float
    priority: int
    prompt_versions: dict[str, str] | None = Field(
        default=None, description="sha256 prefixes of the prompt files the task ran with")
    created_at: str | None
    planned_at: str | None
    started_at: str | None
    completed_at: str | None
    planner: PlannerInfo | None
    subtasks: list[SubtaskOut]


class TaskSummaryOut(BaseModel):
    id: str
    prompt: str
    status: str
    priority: int
    subtasks_total: int
    subtasks_done: int
    total_cost_usd: float
    budget_usd: float
    created_at: str | None
    completed_at: str | None


class TaskList(BaseModel):
    tasks: list[TaskSummaryOut]
    next_cursor: str | None


class PlanValidateIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"plan": EXAMPLE_PLAN}]})
    plan: Any


class PlanValidateOut(BaseModel):
    valid: bool
    errors: list[str]
    waves: list[list[int]]
    critical_path: list[int]
    estimated_cost_usd: float | None


# Symbiont-style shapes (seed 004)

class CompoundTaskRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "Search for patterns and summarize"}]})
    prompt: str = Field(min_length=1, description="The user's request to decompose and execute")
    token: str | None = Field(default=None, description="Auth token (alternative to Bearer header)")


class CompoundTaskResponse(BaseModel):
    id: str
    status: str
    subtask_count: int


class SubtaskSnapshot(BaseModel):
    id: str
    index: int
    description: str
    tier_hint: int
    tier_assigned: int | None
    model: str | None
    depends_on: list[int]
    status: str
    result: str | None
    cost: float | None
    started_at: str | None
    completed_at: str | None


class TaskProgressResponse(BaseModel):
    id: str
    prompt: str
    status: str
    reasoning: str
    subtasks: list[SubtaskSnapshot]
    created_at: str
    planned_at: str
    completed_at: str | None
    total_cost: float


class TaskSummary(BaseModel):
    id: str
    prompt: str
    status: str
    subtask_count: int
    completed_count: int
    total_cost: float
    created_at: str
    completed_at: str | None
