"""The tables. The store is the truth: every state change lands here before anyone
is told (design.md section 1). Times are timezone-aware UTC datetimes (stored as UTC) and
ISO 8601 with a Z on the wire. Money is float USD."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

# The statuses, their transitions and end reasons are defined once, in core/status.py.
from compound.core.status import TERMINAL_SUBTASK as TERMINAL_SUBTASK
from compound.core.status import TERMINAL_TASK as TERMINAL_TASK
from compound.core.status import EndReason as EndReason
from compound.core.status import SubtaskStatus as SubtaskStatus
from compound.core.status import TaskStatus as TaskStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class CallKind(StrEnum):
    planner = "planner"
    subtask = "subtask"
    check = "check"  # a cascade's check of a subtask's answer (its cost is the subtask's)
    synthesis = "synthesis"


class CallStatus(StrEnum):
    reserved = "reserved"  # sent (or about to be); outcome not known yet
    ok = "ok"
    error = "error"  # the provider answered with an error; cost as reported (usually 0)
    lost = "lost"  # the process died while the call was in flight: counted at worst case
    canceled = "canceled"  # canceled by us before an answer came


class User(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("u"), primary_key=True)
    name: str = Field(index=True, unique=True, max_length=200)
    daily_budget_usd: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: str = Field(default_factory=lambda: new_id("tok"), primary_key=True)
    user_id: str = Field(foreign_key="user.id", index=True)
    token_hash: str = Field(unique=True, index=True, max_length=128)  # sha256 hex
    scopes: str = "submit,read"  # comma-separated: submit, read, admin
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class Task(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("t"), primary_key=True)
    user_id: str | None = Field(default=None, foreign_key="user.id", index=True)
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default=TaskStatus.queued, index=True)
    priority: int = 2  # 0 = most urgent .. 3 = least (apflow's convention)
    approve: bool = True  # False: stop at `planned` until approved
    budget_usd: float
    # A plan given by the user (PlanIn as JSON); None means "decompose the prompt".
    plan_in: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Earlier messages of a conversation ([{"role", "content"}], the chat door): data
    # the planner and the synthesis see beside the request. None: no conversation.
    context: list[dict[str, str]] | None = Field(default=None, sa_column=Column(JSON))
    answer_max_tokens: int | None = None  # bounds the synthesis call (a chat client's max_tokens)
    # The task this one re-runs: its subtasks with unchanged inputs reuse that task's results.
    rerun_of: str | None = None
    # Per-tier model lists ({"2": [...]}) that replace the settings' for this task's routing.
    tier_models: dict[str, list[str]] | None = Field(default=None, sa_column=Column(JSON))
    reasoning: str | None = Field(default=None, sa_column=Column(Text))
    result: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    end_reason: str | None = None  # EndReason, written with a terminal status
    # Money: total_cost_usd = sum of the ledger's cost_usd (settled calls, lost calls at
    # their worst case); reserved_usd = sum of open reservations (calls in flight).
    # The budget holds while total_cost_usd + reserved_usd <= budget_usd.
    total_cost_usd: float = 0.0
    reserved_usd: float = 0.0
    planner_model: str | None = None
    prompt_versions: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))
    # What the planner's plan needed fixing without a model (planner/repair.py), in words.
    warnings: list[str] | None = Field(default=None, sa_column=Column(JSON))
    # Each replanning round: [{"round", "reason"}] (docs/design.md, "Replanning").
    replans: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    cancel_requested: bool = False
    event_seq: int = 0  # last TaskEvent.seq written for this task
    created_at: datetime = Field(default_factory=utcnow, index=True)
    planned_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class Subtask(SQLModel, table=True):
    __table_args__ = (Index("ix_subtask_task_index", "task_id", "index", unique=True),)

    id: str = Field(default_factory=lambda: new_id("s"), primary_key=True)
    task_id: str = Field(foreign_key="task.id")
    index: int
    description: str = Field(sa_column=Column(Text, nullable=False))
    tier_hint: int
    tier_assigned: int | None = None
    model: str | None = None  # the model that answered (or the primary, before a call)
    models: list[str] | None = Field(default=None, sa_column=Column(JSON))  # primary first
    depends_on: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The dependencies (a subset of depends_on) this one runs without when they fail.
    optional_deps: list[int] | None = Field(default=None, sa_column=Column(JSON))
    reused_from: str | None = None  # the task whose result this reuses (a re-run); cost 0
    status: str = Field(default=SubtaskStatus.pending)
    result: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # Subtasks that act (design.md section 11): "llm" (with `tools` its model may call)
    # or "tool" (one direct call of `tool` with `arguments`); partial_reason: why its
    # tool loop stopped early (its answer is then written from what it had).
    kind: str = "llm"
    tools: list[str] | None = Field(default=None, sa_column=Column(JSON))
    tool: str | None = None
    arguments: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    partial_reason: str | None = Field(default=None, sa_column=Column(Text))
    round: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # 0: the first plan; n: replan n
    end_reason: str | None = None  # EndReason, written with a terminal status


class ToolCallStatus(StrEnum):
    running = "running"  # its intent is written: sent, or about to be; outcome not known yet
    ok = "ok"
    error = "error"  # the tool (or its server) answered with an error, or could not be reached
    timeout = "timeout"
    unknown = "unknown"  # in flight when the process stopped (or on cancel): may or may not have happened
    awaiting_approval = "awaiting_approval"  # held until a person approves or denies it (never sent yet)
    denied = "denied"  # refused by a person, by the approval timeout, or by a cancel: never sent


TERMINAL_TOOL_CALL = frozenset({ToolCallStatus.ok, ToolCallStatus.error, ToolCallStatus.timeout,
                                ToolCallStatus.unknown, ToolCallStatus.denied})


class ToolCallRow(SQLModel, table=True):
    """One tool call of a subtask: written before it is sent (intent, `running`) and
    when it ends. `id` is its idempotency key (derived from the task, the subtask and the
    call's content), also sent to the MCP server in the call's `_meta`."""

    __tablename__ = "tool_call"
    __table_args__ = (Index("ix_tool_call_task", "task_id", "subtask_index"),)

    id: str = Field(primary_key=True, max_length=64)
    task_id: str = Field(foreign_key="task.id")
    subtask_index: int
    turn: int = 0  # the model turn that asked for it (0: a direct call)
    model_call_id: str | None = None  # the provider's id of the call, as the model named it
    tool: str  # server.tool
    arguments: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=ToolCallStatus.running)
    result: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    started_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None
    # The decision on a call held for approval: "approved" | "denied", by whom (a user
    # name, or "system" for the timeout and a cancel), when, the arguments approved
    # (edited or not) and the message of a denial.
    decision: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_arguments: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    decision_message: str | None = Field(default=None, sa_column=Column(Text))


class LedgerEntry(SQLModel, table=True):
    """One row per model call attempt: reserved before it is sent, settled after."""

    __tablename__ = "ledger"
    # Few indexes on purpose: each one costs every call a page write. (user_id,
    # created_at) serves daily budgets and a user's costs; task_id a task's rows.
    __table_args__ = (Index("ix_ledger_user_created", "user_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(foreign_key="task.id", index=True)
    user_id: str | None = None
    kind: str  # CallKind
    subtask_index: int | None = None
    tier: int | None = None
    model: str
    attempt: int = 1
    status: str = Field(default=CallStatus.reserved)
    reserved_usd: float = 0.0
    cost_usd: float = 0.0  # real cost once settled; 0 while reserved; the reservation if lost
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    # A planner call's answer (the plan is derived from it again on resume); NULL for
    # every other call.
    answer: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    settled_at: datetime | None = None


class TaskEvent(SQLModel, table=True):
    """An append-only log of state changes, written in the same transaction as the
    change itself: SSE replays it (Last-Event-ID = seq)."""

    __tablename__ = "task_event"
    # One b-tree keyed by (task_id, seq): SQLite stores it WITHOUT ROWID.
    __table_args__ = {"sqlite_with_rowid": False}

    task_id: str = Field(foreign_key="task.id", primary_key=True)
    seq: int = Field(primary_key=True)
    kind: str  # "task" or "subtask"
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
