"""The API's request and response shapes (the tables are never the API shape)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    WithJsonSchema,
)

from compound.core.money import shown_usd
from compound.core.status import EndReason
from compound.planner.plan import PlanIn

EXAMPLE_PLAN = PlanIn.model_config["json_schema_extra"]["example"]  # type: ignore[index]


def round_money(value: float) -> float:
    """USD as sent, to the micro-dollar (core/money.py shown_usd); stored values keep
    full precision."""
    return shown_usd(value)


Money = Annotated[float, PlainSerializer(round_money, return_type=float)]


def _json_integer(value: Any) -> Any:
    """A JSON integer: 2 or 2.0 (JSON Schema's integer), never `"2"`, `true` or 2.5."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


JsonNumber = StrictFloat  # a JSON number (an integer too); `"1"` and `true` are refused, not converted
JsonInteger = Annotated[int, BeforeValidator(_json_integer)]

# The plan a request may carry (design section 9), as the description shows it. The
# route checks it with the planner's own validation (every error at once, 422
# `plan_invalid`), which also refuses what JSON Schema cannot say: an index out of
# range, a cycle, more subtasks than COMPOUND_MAX_SUBTASKS, a blank description.
PLAN_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["subtasks"], "description": "a PlanIn to run instead of decomposing",
    "properties": {
        "reasoning": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "why the split"},
        "subtasks": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["description"],
            "properties": {
                "description": {"type": "string", "minLength": 1, "maxLength": 4000},
                "tier_hint": {"type": "integer", "minimum": 1, "maximum": 3, "default": 1},
                "depends_on": {"anyOf": [{"type": "array", "items": {"anyOf": [
                                             {"type": "integer", "minimum": 0},
                                             {"type": "object", "required": ["index"], "additionalProperties": False,
                                              "properties": {"index": {"type": "integer", "minimum": 0},
                                                             "required": {"type": "boolean", "default": True}}}]}},
                                         {"type": "null"}],
                               "description": "subtasks whose results this needs: 0-based indices, or "
                                              '{"index": i, "required": false} for one it can run without '
                                              "(null: none)"},
            }}},
    },
    "example": EXAMPLE_PLAN,
}
# A prompt has something besides blanks, and no NUL (the route says which rule failed).
PROMPT_PATTERN = r"^[^\u0000]*[^\u0000\s][^\u0000]*$"
PlanBody = Annotated[dict[str, Any] | None,
                     WithJsonSchema({"anyOf": [PLAN_SCHEMA, {"type": "null"}], "default": None})]


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "Compare SQLite and PostgreSQL for a small team and recommend one", "budget_usd": 0.5},
        {"prompt": "Run my plan", "plan": EXAMPLE_PLAN, "priority": 1},
    ]})

    prompt: str = Field(min_length=1, description="the request, in natural language",
                        json_schema_extra={"pattern": PROMPT_PATTERN})
    budget_usd: JsonNumber | None = Field(default=None, gt=0, le=10_000, description="hard cap in USD")
    priority: JsonInteger = Field(default=2, ge=0, le=3, description="0 = most urgent .. 3 = least")
    plan: PlanBody = None
    approve: StrictBool = Field(default=True, description="false: stop at `planned` until approved")


class RerunIn(BaseModel):
    """A new task from an earlier one: the same request, with the plan, the budget or
    both changed. Subtasks whose description, tier, models and inputs are unchanged
    reuse the earlier results at no cost."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {}, {"budget_usd": 0.5}, {"plan": EXAMPLE_PLAN}, {"models": {"2": ["anthropic/claude-haiku-4-5"]}}]})

    plan: PlanBody = Field(default=None, description="the plan to run (default: the earlier task's plan)")
    budget_usd: JsonNumber | None = Field(default=None, gt=0, le=10_000,
                                          description="hard cap in USD (default: the earlier task's budget)")
    models: dict[str, list[str]] | None = Field(
        default=None, description='models for a tier, primary first, replacing its list for the new task: '
                                  '{"2": ["anthropic/claude-haiku-4-5", ...]}; keys "1", "2", "3"; only models '
                                  "this server is configured with (default: the earlier task's)")


class WorstCase(BaseModel):
    """Calls booked at their reserved worst case: lost in a crash or a timeout, or
    canceled in flight. Their real cost is unknown; the ledger counts the most they
    could have cost, so a total may over-state, never under-state."""

    calls: int
    cost_usd: Money


class PlannerInfo(BaseModel):
    """The planner's calls (or the synthesis's): the model of the latest, and their sum."""

    model: str | None
    cost_usd: Money
    input_tokens: int
    output_tokens: int
    calls: int = Field(description="calls made, every attempt counted")
    worst_case: WorstCase | None = Field(description="what of cost_usd is booked at the worst case; null: none")


class ApprovalOut(BaseModel):
    """The decision on a call held for approval."""

    decision: Literal["approved", "denied"]
    by: str | None = Field(description='the user who decided ("system": the approval timeout)')
    at: str | None
    arguments: dict[str, Any] | None = Field(description="the arguments approved when edited; null: the model's")
    message: str | None = Field(description="a denial's message, which the model reads")


class ToolCallOut(BaseModel):
    id: str = Field(description="the call's idempotency key (also sent to the MCP server in `_meta`)")
    tool: str = Field(description="server.tool")
    arguments: dict[str, Any] = Field(description="the arguments the model asked for")
    status: str = Field(description="awaiting_approval | running | ok | error | timeout | denied | unknown "
                                    "(in flight at a crash or a cancel)")
    result: str | None = Field(description="the tool's result as kept, shown up to 2,000 characters")
    error: str | None
    started_at: str | None
    completed_at: str | None
    approval: ApprovalOut | None = Field(default=None, description="the decision on it, when it was held for one")


class ToolCallApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"arguments": {"n": 2}}]})

    arguments: dict[str, Any] | None = Field(default=None, description="the arguments to send instead of the "
                                                                       "model's (a JSON object); default: the model's")


MAX_DENY_MESSAGE_CHARS = 2000  # a refusal's message, which the model reads


class ToolCallDenyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"message": "not on a Friday"}]})

    message: str | None = Field(default=None, max_length=MAX_DENY_MESSAGE_CHARS, description="why; the model reads it")


class ToolCallDecided(ToolCallOut):
    """A held call after the decision, and its subtask's index."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "index": 1, "id": "tc_0f3a9c", "tool": "facts.bump", "arguments": {"n": 1}, "status": "running",
        "result": None, "error": None, "started_at": "2026-12-03T08:00:00Z", "completed_at": None,
        "approval": {"decision": "approved", "by": "alice", "at": "2026-12-03T08:01:00Z", "arguments": {"n": 2},
                     "message": None}}]})

    index: int = Field(description="the subtask's index")


END_REASON_DOC = ("why it ended, set with its terminal status (null before): completed, budget, canceled, "
                  "failed_plan, failed_provider, failed_tool, failed_subtasks, skipped_dependency or internal")


class SubtaskOut(BaseModel):
    index: int
    description: str
    tier_hint: int
    tier_assigned: int | None
    model: str | None
    depends_on: list[int]
    optional_depends_on: list[int] = Field(
        default_factory=list, description="those of depends_on it runs without when they end with no result")
    status: str
    result: str | None
    error: str | None
    attempts: int
    cost_usd: Money = Field(description="every call of the subtask, worst-case bookings included")
    input_tokens: int
    output_tokens: int
    worst_case: WorstCase | None = Field(description="what of cost_usd is booked at the worst case; null: none")
    started_at: str | None
    completed_at: str | None
    kind: str = Field(default="llm", description='"llm" (a model, in a tool loop when `tools`) or "tool" (one call)')
    tools: list[str] = Field(default_factory=list, description="the tools (server.tool) its model may call")
    tool_calls: list[ToolCallOut] = Field(default_factory=list, description="its tool calls, oldest first")
    partial_reason: str | None = Field(default=None, description="why its tool loop stopped early; null: it did not")
    reused_from: str | None = Field(
        default=None, description="a re-run's: the earlier task whose result this reuses, at no cost")
    round: int = Field(default=0, description="0: the first plan; n: added by replanning round n")
    end_reason: EndReason | None = Field(default=None, description=END_REASON_DOC)


class ReplanOut(BaseModel):
    round: int
    reason: str = Field(description="why the round ran: which subtasks failed for good, and how")


SUBTASK_EXAMPLE: dict[str, Any] = {
    "index": 0, "description": "Summarise the pros of SQLite", "tier_hint": 1, "tier_assigned": 1,
    "model": "anthropic/claude-haiku-4-5", "depends_on": [], "status": "completed",
    "result": "SQLite is embedded, zero-config ...", "error": None, "attempts": 1, "cost_usd": 0.0011,
    "input_tokens": 300, "output_tokens": 150, "worst_case": None, "started_at": "2026-11-22T10:00:01Z",
    "completed_at": "2026-11-22T10:00:03Z", "kind": "llm", "tools": [], "tool_calls": [], "partial_reason": None,
    "optional_depends_on": [], "reused_from": None, "round": 0, "end_reason": "completed"}
TASK_EXAMPLE: dict[str, Any] = {
    "id": "t_3f2a9c0d1e4b5a6c", "prompt": "Compare SQLite and PostgreSQL for a small team",
    "status": "executing", "reasoning": "Two independent summaries, then a comparison.", "result": None,
    "error": None, "budget_usd": 0.5, "total_cost_usd": 0.0123, "priority": 2,
    "prompt_versions": {"decompose": "d06875606c1f", "subtask": "99b2209402a7", "synthesize": "8eae2a77e60f"},
    "warnings": [], "replans": [], "end_reason": None, "created_at": "2026-11-22T10:00:00Z",
    "planned_at": "2026-11-22T10:00:01Z",
    "started_at": "2026-11-22T10:00:01Z", "completed_at": None,
    "planner": {"model": "anthropic/claude-haiku-4-5", "cost_usd": 0.0004, "input_tokens": 812,
                "output_tokens": 240, "calls": 1, "worst_case": None},
    "synthesis": None, "worst_case": {"calls": 0, "cost_usd": 0.0},
    "subtasks": [SUBTASK_EXAMPLE]}


class TaskOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [TASK_EXAMPLE]})

    id: str
    prompt: str
    status: str
    reasoning: str | None
    result: str | None
    error: str | None
    budget_usd: Money
    total_cost_usd: Money
    priority: int
    prompt_versions: dict[str, str] | None = Field(
        default=None, description="sha256 prefixes of the prompt files the task ran with")
    warnings: list[str] = Field(
        default_factory=list, description="what the planner's plan needed fixing without a model")
    rerun_of: str | None = Field(default=None, description="the task this one re-runs (POST .../rerun)")
    replans: list[ReplanOut] = Field(default_factory=list, description="each replanning round and why it ran")
    end_reason: EndReason | None = Field(default=None, description=END_REASON_DOC)
    created_at: str | None
    planned_at: str | None
    started_at: str | None
    completed_at: str | None
    planner: PlannerInfo | None
    synthesis: PlannerInfo | None = Field(description="the synthesis's calls; null until it is called")
    worst_case: WorstCase = Field(description="the task's calls booked at their worst case, all parts together")
    subtasks: list[SubtaskOut]


class TaskSummaryOut(BaseModel):
    id: str
    prompt: str
    status: str
    priority: int
    subtasks_total: int
    subtasks_done: int
    total_cost_usd: Money
    budget_usd: Money
    created_at: str | None
    completed_at: str | None


class TaskList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tasks": [{
        "id": "t_3f2a9c0d1e4b5a6c", "prompt": "Compare SQLite and PostgreSQL", "status": "completed",
        "priority": 2, "subtasks_total": 3, "subtasks_done": 3, "total_cost_usd": 0.0123, "budget_usd": 0.5,
        "created_at": "2026-11-22T10:00:00Z", "completed_at": "2026-11-22T10:00:09Z"}],
        "next_cursor": "1795341600000000.t_3f2a9c0d1e4b5a6c"}]})

    tasks: list[TaskSummaryOut]
    next_cursor: str | None = Field(description="the `cursor` of the next page; null on the last page")


# ISO 8601 as RFC 3339 writes it: a full date (`2026-11-22`) or a date-time with
# seconds (`2026-11-22T10:00:00Z`, a fraction and an offset optional: none is UTC).
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
DATE_TIME = DATE + r"[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?"
WHEN_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "string", "format": "date"}, {"type": "string", "format": "date-time"},
    {"type": "string", "maxLength": 0}, {"type": "null"}]}
When = Annotated[str | None, WithJsonSchema(WHEN_SCHEMA)]


class PlanValidateIn(BaseModel):
    """`{"plan": PlanIn}`, or the bare PlanIn itself (the output of `compound plan --json`)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"plan": EXAMPLE_PLAN}, EXAMPLE_PLAN]})
    plan: Any = None

    def the_plan(self) -> Any:
        return self.plan if self.plan is not None or not self.model_extra else self.model_extra


class PlanValidateOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"valid": True, "errors": [], "waves": [[0, 1], [2]], "critical_path": [0, 2], "estimated_cost_usd": 0.1883},
        {"valid": False, "errors": ["subtask 1 depends on 7, but the plan has 3 subtasks (indices 0 to 2)"],
         "waves": [], "critical_path": [], "estimated_cost_usd": None}]})

    valid: bool
    errors: list[str]
    waves: list[list[int]]
    critical_path: list[int]
    estimated_cost_usd: Money | None


# Symbiont-style shapes (seed 004)

class CompoundTaskRequest(BaseModel):
    """Unknown fields are refused, as on POST /v1/tasks (one rule for every body)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "Search for patterns and summarize"}, {"prompt": "Compare two options", "budget_usd": 0.25}]})
    prompt: str = Field(min_length=1, description="The user's request to decompose and execute",
                        json_schema_extra={"pattern": PROMPT_PATTERN})
    token: str | None = Field(default=None, description="Auth token (alternative to Bearer header)")
    budget_usd: JsonNumber | None = Field(default=None, gt=0, le=10_000, description="hard cap in USD")


class CompoundTaskResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": "t_3f2a9c0d1e4b5a6c", "status": "planned", "subtask_count": 3}]})

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
    cost: Money | None
    started_at: str | None
    completed_at: str | None


class TaskProgressResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "t_3f2a9c0d1e4b5a6c", "prompt": "Search for patterns and summarize", "status": "executing",
        "reasoning": "Two searches, then a summary.", "subtasks": [{
            "id": "t_3f2a9c0d1e4b5a6c:0", "index": 0, "description": "Search the logs for errors", "tier_hint": 1,
            "tier_assigned": 1, "model": "anthropic/claude-haiku-4-5", "depends_on": [], "status": "completed",
            "result": "...", "cost": 0.0011, "started_at": "2026-11-22T10:00:01Z",
            "completed_at": "2026-11-22T10:00:03Z"}],
        "created_at": "2026-11-22T10:00:00Z", "planned_at": "2026-11-22T10:00:01Z", "completed_at": None,
        "total_cost": 0.0015, "result": None, "error": None}]})

    id: str
    prompt: str
    status: str
    reasoning: str
    subtasks: list[SubtaskSnapshot]
    created_at: str
    planned_at: str
    completed_at: str | None
    total_cost: Money
    result: str | None = Field(default=None, description="the final answer once the task has one")
    error: str | None = Field(default=None, description="why the task failed, was canceled or is partial")


class TaskSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "t_3f2a9c0d1e4b5a6c", "prompt": "Search for patterns and summarize", "status": "completed",
        "subtask_count": 3, "completed_count": 3, "total_cost": 0.0123, "created_at": "2026-11-22T10:00:00Z",
        "completed_at": "2026-11-22T10:00:09Z"}]})

    id: str
    prompt: str
    status: str
    subtask_count: int
    completed_count: int
    total_cost: Money
    created_at: str
    completed_at: str | None


class CostGroup(BaseModel):
    key: str
    cost_usd: Money
    calls: int
    input_tokens: int
    output_tokens: int


class CostsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "since": "2026-10-24T00:00:00Z", "until": "2026-11-23T00:00:00Z", "group_by": "model",
        "total_usd": 0.0412, "calls": 31, "input_tokens": 20480, "output_tokens": 5120,
        "groups": [{"key": "anthropic/claude-haiku-4-5", "cost_usd": 0.0093, "calls": 22,
                    "input_tokens": 15000, "output_tokens": 3000}]}]})

    since: str
    until: str
    group_by: str | None
    total_usd: Money
    calls: int
    input_tokens: int
    output_tokens: int
    groups: list[CostGroup]


class SpendSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user": "alice", "admin": False, "today_usd": 0.012, "week_usd": 0.2, "month_usd": 1.4,
        "daily_budget_usd": 5.0}]})

    user: str
    admin: bool = Field(default=False, description="the token is an admin's: the sums cover every user")
    today_usd: Money
    week_usd: Money
    month_usd: Money
    daily_budget_usd: Money | None
