"""What the two stores share: each method of the RunStore seam is one of store/ops.py's
operations, run by the implementation's `_write` (its writer) or `_read` (off the loop)
in its own dialect. An implementation gives `dialect`, `lock_users`, `queries`, `_write`,
`_read` and `_core`."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from compound.core.logging import get_logger
from compound.store import Store, ops, ops_calls, ops_reads, ops_tools
from compound.store.sqlrun import ReadQueries, check_token, hash_token, new_task_id
from compound.store.users import EngineUsers
from compound.store.values import (
    Event,
    Principal,
    Reservation,
    ReserveOutcome,
    ReserveRequest,
    Settlement,
    SubState,
    TaskHead,
    TaskState,
    ToolCallRecord,
)

task_log = get_logger("compound.task")


def log_status(task_id: str, status: str, *, error: str | None = None, total: float | None = None,
               subtasks: int | None = None) -> None:
    """One structured log line per task state change, written by the store once the
    change is committed (both dialects call this, after their write)."""
    status = str(getattr(status, "value", status))
    fields: dict[str, Any] = {"task_id": task_id, "status": status}
    if total is not None:
        fields["cost_usd"] = round(float(total), 9)
    if subtasks is not None:
        fields["subtasks"] = subtasks
    if error:
        fields["error"] = error[:500]
    (task_log.warning if status in ("failed", "partial") else task_log.info)("task status", **fields)


class OpsRunStore(Store, EngineUsers):
    """The seam's methods over ops.py, for any SQL implementation; users and tokens
    over the admin engine, but for the token lookup of every request, which is one of
    ops.py's reads."""

    dialect: Any
    lock_users: bool  # serialize one user's reservations with SELECT ... FOR UPDATE
    queries: ReadQueries

    @abc.abstractmethod
    async def _write(self, factory: Callable[[], ops.Op]) -> Any: ...

    @abc.abstractmethod
    async def _read(self, factory: Callable[[], ops.Op]) -> Any: ...

    @abc.abstractmethod
    async def _core(self, stmt: Any) -> list[Any]: ...

    # writes ---------------------------------------------------------------------------

    async def create_task(self, *, prompt: str, budget_usd: float, user_id: str | None = None,
                          priority: int = 2, plan_in: dict[str, Any] | None = None,
                          approve: bool = True, context: list[dict[str, str]] | None = None,
                          answer_max_tokens: int | None = None, rerun_of: str | None = None,
                          tier_models: dict[str, list[str]] | None = None) -> TaskState:
        task_id = new_task_id()
        out: TaskState = await self._write(lambda: ops.create_task(
            self.dialect, task_id, prompt=prompt, budget_usd=budget_usd, user_id=user_id, priority=priority,
            plan_in=plan_in, approve=approve, context=context, answer_max_tokens=answer_max_tokens,
            rerun_of=rerun_of, tier_models=tier_models))
        return out

    async def set_status(self, task_id: str, status: str, *, error: str | None = None,
                         result: str | None = None, reason: str | None = None) -> bool:
        return await self.set_status_unless_ended(task_id, status, error=error, result=result, reason=reason)

    async def set_planner_model(self, task_id: str, model: str) -> None:
        await self._write(lambda: ops.set_planner_model(self.dialect, task_id, model))

    async def save_plan(self, task_id: str, *, reasoning: str | None, subtasks: Sequence[SubState],
                        prompt_versions: dict[str, str], status: str, warnings: Sequence[str] = (),
                        size: int | None = None) -> bool:
        total = await self._write(lambda: ops.save_plan(self.dialect, task_id, reasoning=reasoning, subtasks=subtasks,
                                                        prompt_versions=prompt_versions, status=status,
                                                        warnings=warnings))
        if total is None:
            return False
        log_status(task_id, status, total=total, subtasks=len(subtasks) if size is None else size)
        return True

    async def add_subtasks(self, task_id: str, subtasks: Sequence[SubState], *,
                           replan: dict[str, Any] | None = None) -> None:
        await self._write(lambda: ops.add_subtasks(self.dialect, task_id, subtasks, replan=replan))

    async def replace_pending(self, task_id: str, sub: SubState) -> SubState:
        out: SubState = await self._write(lambda: ops.replace_pending(self.dialect, task_id, sub))
        return out

    async def end_subtask(self, task_id: str, index: int, *, status: str, error: str | None,
                          reason: str | None = None) -> SubState:
        out: SubState = await self._write(
            lambda: ops.end_subtask(self.dialect, task_id, index, status=status, error=error, reason=reason))
        return out

    async def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveOutcome]:
        out: list[ReserveOutcome] = await self._write(
            lambda: ops_calls.reserve(self.dialect, requests, lock_users=self.lock_users))
        return out

    async def settle(self, task_id: str, reservation: Reservation, subtask: int | None,
                     outcome: Settlement) -> SubState | None:
        out: SubState | None = await self._write(
            lambda: ops_calls.settle(self.dialect, task_id, reservation, subtask, outcome))
        return out

    async def recover(self, task_id: str) -> int:
        return int(await self._write(lambda: ops.recover(self.dialect, task_id)))

    async def request_cancel(self, task_id: str) -> str | None:
        out: str | None = await self._write(lambda: ops.request_cancel(self.dialect, task_id))
        return out

    async def cancel_open(self, task_id: str) -> None:
        await self._write(lambda: ops.cancel_open(self.dialect, task_id))

    async def set_status_unless_ended(self, task_id: str, status: str, *, error: str | None = None,
                                      result: str | None = None, only_from: Collection[str] | None = None,
                                      reason: str | None = None) -> bool:
        applied, total = await self._write(lambda: ops.set_status(
            self.dialect, task_id, status, error=error, result=result, reason=reason,
            only_from=None if only_from is None else sorted(only_from)))
        if applied:
            log_status(task_id, status, error=error, total=total)
        return bool(applied)

    async def set_approved(self, task_id: str) -> None:
        await self._write(lambda: ops.set_approved(self.dialect, task_id))

    async def tool_call_started(self, task_id: str, call: ToolCallRecord, *, acting: bool = True) -> ToolCallRecord:
        rec: ToolCallRecord = await self._write(lambda: ops_tools.tool_call_started(self.dialect, task_id, call,
                                                                              acting=acting))
        return rec

    async def tool_call_ended(self, task_id: str, call_id: str, *, status: str, result: str | None,
                              error: str | None) -> ToolCallRecord:
        rec: ToolCallRecord = await self._write(lambda: ops_tools.tool_call_ended(
            self.dialect, task_id, call_id, status=status, result=result, error=error))
        return rec

    async def tool_call_completed(self, task_id: str, call_id: str, *, result: str) -> SubState:
        sub: SubState = await self._write(lambda: ops_tools.tool_call_completed(self.dialect, task_id, call_id,
                                                                          result=result))
        return sub

    async def tool_call_held(self, task_id: str, call: ToolCallRecord, *, write: bool = True) -> ToolCallRecord:
        rec: ToolCallRecord = await self._write(
            lambda: ops_tools.tool_call_held(self.dialect, task_id, call, write=write))
        return rec

    async def decide_tool_call(self, task_id: str, call_id: str, *, approve: bool, by: str,
                               arguments: dict[str, Any] | None = None,
                               message: str | None = None) -> ToolCallRecord:
        rec: ToolCallRecord = await self._write(lambda: ops_tools.decide_tool_call(
            self.dialect, task_id, call_id, approve=approve, by=by, arguments=arguments, message=message))
        return rec

    async def tool_calls(self, task_id: str, subtask: int) -> list[ToolCallRecord]:
        recs: list[ToolCallRecord] = await self._read(lambda: ops_tools.tool_calls(self.dialect, task_id, subtask))
        return recs

    async def complete_subtask(self, task_id: str, index: int, *, result: str,
                               partial_reason: str | None = None) -> SubState:
        sub: SubState = await self._write(lambda: ops.complete_subtask(
            self.dialect, task_id, index, result=result, partial_reason=partial_reason))
        return sub

    # reads ----------------------------------------------------------------------------

    async def load(self, task_id: str) -> TaskState | None:
        out: TaskState | None = await self._read(lambda: ops_reads.load(self.dialect, task_id))
        return out

    async def unfinished_task_ids(self) -> list[str]:
        out: list[str] = await self._read(lambda: ops_reads.unfinished_task_ids(self.dialect))
        return out

    async def budget_left(self, task_id: str) -> float:
        return float(await self._read(lambda: ops_reads.budget_left(self.dialect, task_id)))

    async def user_daily_budget(self, user_id: str | None, default: float | None) -> float | None:
        out: float | None = await self._read(lambda: ops_reads.user_daily_budget(self.dialect, user_id, default))
        return out

    async def events_after(self, task_id: str, seq: int, limit: int = 500) -> list[Event]:
        out: list[Event] = await self._read(lambda: ops_reads.events_after(self.dialect, task_id, seq, limit))
        return out

    async def head(self, task_id: str, *, user_id: str | None = None) -> TaskHead:
        out: TaskHead = await self._read(lambda: ops_reads.head(self.dialect, task_id, user_id))
        return out

    async def snapshot(self, task_id: str, *, user_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = await self._read(lambda: ops_reads.snapshot(self.dialect, task_id, user_id))
        return out

    async def versioned_snapshot(self, task_id: str) -> tuple[TaskHead, dict[str, Any]]:
        out: tuple[TaskHead, dict[str, Any]] = await self._read(
            lambda: ops_reads.versioned_snapshot(self.dialect, task_id, None))
        return out

    async def task_tokens(self, task_id: str) -> tuple[int, int]:
        row = (await self._core(self.queries.task_tokens(task_id)))[0]
        return int(row[0]), int(row[1])

    async def ledger_rows(self, task_id: str) -> list[dict[str, Any]]:
        stmt, names = self.queries.ledger_rows(task_id)
        return [dict(zip(names, r, strict=True)) for r in await self._core(stmt)]

    async def list_tasks(self, *, user_id: str | None, limit: int = 20, status: str | None = None,
                         cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        stmt = self.queries.list_tasks(user_id=user_id, limit=limit, status=status, cursor=cursor)
        return self.queries.list_page(await self._core(stmt), limit)

    async def costs(self, *, since: datetime, until: datetime, group_by: str | None,
                    user_id: str | None) -> dict[str, Any]:
        total, groups = self.queries.costs(since=since, until=until, group_by=group_by, user_id=user_id)
        return self.queries.costs_shape(await self._core(total), await self._core(groups) if groups is not None
                                        else [])

    async def spend_summary(self, *, user_id: str | None) -> dict[str, float]:
        return await self.queries.spend_summary(self, user_id=user_id)

    async def task_counts(self) -> dict[str, int]:
        out: dict[str, int] = await self._read(lambda: ops_reads.task_counts(self.dialect))
        return out

    async def principal_for_token(self, token: str) -> Principal | None:
        digest = hash_token(token)
        return check_token(token, await self._read(lambda: ops_reads.principal_for_token(self.dialect, digest)))
