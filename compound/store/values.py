"""The store's values: what its methods take and return. Dataclasses with no I/O; the
frozen ones are values (the store never mutates the caller's objects: a write returns
the new state instead).

Event data shapes (the contract between the executor, SSE and the dashboard):
  kind "task":    {"status", "error", "total_cost_usd", "result"?: str}
  kind "subtask": {"index", "status", "model", "tier_assigned", "attempts",
                   "cost_usd", "input_tokens", "output_tokens", "error", "result"?: str,
                   "partial_reason"?: str}
  kind "tool_call": {"index", "id", "tool", "arguments", "status", "result", "error",
                     "started_at", "completed_at"} (result cut to TOOL_RESULT_SHOWN_CHARS)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from compound.core.status import TERMINAL_TASK


@dataclass(frozen=True, slots=True)
class Event:
    """One committed state change of a task; `seq` is its id within the task (SSE id)."""

    task_id: str
    seq: int
    kind: str  # "task" | "subtask"
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        """The task's last event: a task event with a terminal status."""
        return self.kind == "task" and self.data.get("status") in TERMINAL_TASK


@dataclass(frozen=True, slots=True)
class SubState:
    """A subtask as the executor sees it (a value: the store returns new ones)."""

    index: int
    description: str
    tier_hint: int
    tier_assigned: int
    models: list[str]
    depends_on: list[int]
    status: str
    model: str | None = None
    result: str | None = None
    error: str | None = None
    attempts: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    # design.md section 11: "llm" (its model may call `tools`) or "tool" (one direct call)
    kind: str = "llm"
    tools: list[str] = field(default_factory=list)
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    partial_reason: str | None = None

    optional: list[int] = field(default_factory=list)  # the dependencies it can do without
    reused_from: str | None = None  # the task whose result this one reuses (a re-run's)
    round: int = 0  # 0: the first plan; n: added by replanning round n
    end_reason: str | None = None  # why it ended (core/status.py EndReason); None while it has not


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call of a subtask as recorded: `id` is its idempotency key; `turn` the
    model turn that asked for it (0: a direct call); `model_call_id` the provider's id."""

    id: str
    subtask: int
    turn: int
    model_call_id: str | None
    tool: str
    arguments: dict[str, Any]
    status: str  # ToolCallStatus
    result: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # the decision on a call held for approval (design.md section 11)
    decision: str | None = None  # "approved" | "denied"
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_arguments: dict[str, Any] | None = None
    decision_message: str | None = None

    @property
    def sent_arguments(self) -> dict[str, Any]:
        """What the call is sent with: the arguments approved, else the model's."""
        return self.decided_arguments if self.decided_arguments is not None else self.arguments


@dataclass(frozen=True, slots=True)
class TaskState:
    """A task and its subtasks as the executor sees it."""

    id: str
    user_id: str | None
    prompt: str
    status: str
    priority: int
    approve: bool
    budget_usd: float
    plan_in: dict[str, Any] | None
    reasoning: str | None
    total_cost_usd: float
    reserved_usd: float
    cancel_requested: bool
    event_seq: int
    subtasks: list[SubState] = field(default_factory=list)
    # A conversation's earlier messages (the chat door) and a bound on the answer.
    context: list[dict[str, str]] | None = None
    answer_max_tokens: int | None = None
    rerun_of: str | None = None  # the task this one re-runs (its unchanged results are reused)
    tier_models: dict[str, list[str]] | None = None  # {"2": [...]}: this task's models for a tier


@dataclass(frozen=True, slots=True)
class TaskHead:
    """The few columns a route needs to authorize and version a task."""

    id: str
    user_id: str | None
    status: str
    event_seq: int


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """One call's worst case to reserve before it is sent. With `subtask`, the
    reservation also counts the attempt and marks the subtask running."""

    task_id: str
    user_id: str | None
    kind: str  # CallKind
    subtask: int | None
    tier: int | None
    model: str
    attempt: int
    amount: float
    daily_budget: float | None


@dataclass(frozen=True, slots=True)
class Reservation:
    ledger_id: int
    amount: float


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """The task's budget has no room for the call: `left` of it is unreserved."""

    left: float


@dataclass(frozen=True, slots=True)
class DailyRefusal:
    """The user's daily budget has no room for the call: `spent` today already."""

    spent: float


ReserveOutcome = Reservation | BudgetRefusal | DailyRefusal


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a reserved call ended. `status` is a CallStatus; `complete_with` completes
    the subtask with that result in the same transaction; `answer` keeps a planner
    call's text on its ledger row, so a task resumed before its plan was saved plans
    from it instead of paying for the call again."""

    status: str
    cost_usd: float
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float | None = None
    error: str | None = None
    complete_with: str | None = None
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's user and scopes."""

    user_id: str
    user_name: str
    scopes: frozenset[str]
    token_id: str

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


@dataclass
class StoreStats:
    """Counters for tests and benchmarks: reads and writes asked of the store, and
    transactions committed (a group commit covers many writes)."""

    reads: int = 0
    writes: int = 0
    commits: int = 0
