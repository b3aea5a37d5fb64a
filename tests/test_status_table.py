"""Statuses and their transitions as one table (core/status.py): the store refuses a
write the table does not allow, and changes nothing; why a task or subtask ended is a
typed value the doors read; every door authenticates through the routes' token cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from compound.api.doors.engine import failure
from compound.core.status import (
    SUBTASK_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_SUBTASK,
    TERMINAL_TASK,
    EndReason,
    SubtaskStatus,
    TaskStatus,
    end_reason,
    subtask_may,
    subtask_sources,
    task_may,
    task_path,
    task_sources,
)
from compound.llm.base import Message
from compound.store.base import RunStore
from compound.store.db import make_engine
from compound.store.migrate import upgrade
from compound.store.users import list_tokens, revoke_token
from compound.store.values import Reservation, ReserveRequest, Settlement, SubState
from tests.fixtures.fakes import FakeLLM, transient
from tests.test_executor import executor, kind_answer, plan

# the table ---------------------------------------------------------------------------


def test_every_status_is_in_the_table_and_the_ends_lead_nowhere() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskStatus)
    assert set(SUBTASK_TRANSITIONS) == set(SubtaskStatus)
    assert {"completed", "partial", "failed", "canceled"} == TERMINAL_TASK
    assert {"completed", "failed", "skipped", "canceled"} == TERMINAL_SUBTASK


@pytest.mark.parametrize("status", sorted(set(TaskStatus) - TERMINAL_TASK))
def test_every_open_task_status_can_fail_or_be_canceled(status: str) -> None:
    assert task_may(status, "failed") and task_may(status, "canceled")
    assert task_path(status)[-1:] == ([status] if status != "queued" else [])


@pytest.mark.parametrize(("frm", "to", "allowed"), [
    ("queued", "planning", True),
    ("planning", "planning", True),  # a resumed task plans again
    ("planned", "executing", True),
    ("executing", "completed", True),
    ("queued", "executing", False),
    ("queued", "completed", False),
    ("planned", "partial", False),
    ("completed", "executing", False),
    ("canceled", "completed", False),
    ("failed", "failed", False),
])
def test_task_transitions(frm: str, to: str, allowed: bool) -> None:
    assert task_may(frm, to) is allowed
    assert (frm in task_sources(to)) is allowed


@pytest.mark.parametrize(("frm", "to", "allowed"), [
    ("pending", "running", True),
    ("running", "running", True),  # the next attempt of its call
    ("running", "pending", True),  # recovered after a crash
    ("running", "awaiting_approval", True),
    ("awaiting_approval", "running", True),
    ("awaiting_approval", "canceled", True),
    ("awaiting_approval", "failed", True),
    ("awaiting_approval", "completed", False),
    ("pending", "awaiting_approval", True),  # a direct tool call held at once
    ("awaiting_approval", "pending", True),  # recovered after a crash (the call is still held)
    ("completed", "failed", False),
    ("canceled", "completed", False),
    ("skipped", "running", False),
])
def test_subtask_transitions(frm: str, to: str, allowed: bool) -> None:
    assert subtask_may(frm, to) is allowed
    assert (frm in subtask_sources(to)) is allowed


def test_only_from_narrows_the_sources_and_never_widens_them() -> None:
    assert task_sources("canceled", only_from=("queued", "planned")) == ["planned", "queued"]
    assert task_sources("completed", only_from=("queued", "executing")) == ["executing"]
    assert task_sources("executing", only_from=("completed",)) == []


@pytest.mark.parametrize(("status", "given", "out"), [
    ("completed", None, "completed"),
    ("canceled", None, "canceled"),
    ("failed", None, "internal"),
    ("failed", "budget", "budget"),
    ("partial", None, "failed_subtasks"),
    ("skipped", None, "skipped_dependency"),
    ("skipped", "budget", "budget"),
    ("executing", "budget", None),  # not an end: no reason
    ("running", None, None),
])
def test_end_reasons(status: str, given: str | None, out: str | None) -> None:
    assert end_reason(status, given) == out


def test_an_end_reason_outside_the_enum_is_refused() -> None:
    with pytest.raises(ValueError, match="out of money"):
        end_reason("failed", "out of money")


# the store ---------------------------------------------------------------------------


async def _task_at(store: RunStore, status: str) -> str:
    task = await store.create_task(prompt="p", budget_usd=1.0)
    for step in task_path(status):
        assert await store.set_status(task.id, step)
    return task.id


@pytest.mark.parametrize("frm", sorted(TaskStatus))
async def test_a_task_status_write_applies_exactly_when_the_table_allows_it(any_store: RunStore, frm: str) -> None:
    for to in sorted(TaskStatus):
        task_id = await _task_at(any_store, frm)
        before = await any_store.snapshot(task_id)
        events = await any_store.events_after(task_id, 0)
        applied = await any_store.set_status(task_id, to, error="x", result="r")
        assert applied is task_may(frm, to), (frm, to)
        after = await any_store.snapshot(task_id)
        if applied:
            assert after["status"] == to
            assert after["end_reason"] == end_reason(to)
            assert len(await any_store.events_after(task_id, 0)) == len(events) + 1
        else:  # refused: nothing changed, nothing was told
            assert after == before
            assert await any_store.events_after(task_id, 0) == events


async def test_completed_to_executing_is_refused_and_the_task_ends_with_one_event(any_store: RunStore) -> None:
    task_id = await _task_at(any_store, "executing")
    assert await any_store.set_status(task_id, TaskStatus.completed, result="the answer")
    assert not await any_store.set_status(task_id, TaskStatus.executing)
    assert not await any_store.set_status_unless_ended(task_id, TaskStatus.canceled, error="late")
    assert not await any_store.set_status(task_id, TaskStatus.failed, error="late", reason=EndReason.internal)
    snap = await any_store.snapshot(task_id)
    assert (snap["status"], snap["result"], snap["error"], snap["end_reason"]) == (
        "completed", "the answer", None, "completed")
    ends = [e for e in await any_store.events_after(task_id, 0) if e.terminal]
    assert [e.data["status"] for e in ends] == ["completed"]


def _sub(index: int, status: str = "pending") -> SubState:
    return SubState(index=index, description=f"s{index}", tier_hint=1, tier_assigned=1, models=["m"],
                    depends_on=[], status=status, model="m")


async def _planned(store: RunStore, n: int) -> str:
    task_id = await _task_at(store, "planning")
    assert await store.save_plan(task_id, reasoning=None, subtasks=[_sub(i) for i in range(n)],
                                 prompt_versions={}, status=TaskStatus.planned)
    assert await store.set_status(task_id, TaskStatus.executing)
    return task_id


async def test_a_subtask_that_ended_stays_as_it_ended(any_store: RunStore) -> None:
    task_id = await _planned(any_store, 3)
    done = await any_store.complete_subtask(task_id, 0, result="zero")
    assert (done.status, done.end_reason) == ("completed", "completed")
    skipped = await any_store.end_subtask(task_id, 1, status="skipped", error="no room", reason=EndReason.budget)
    assert (skipped.status, skipped.end_reason) == ("skipped", "budget")
    events = await any_store.events_after(task_id, 0)
    again = await any_store.end_subtask(task_id, 0, status="failed", error="late", reason=EndReason.failed_provider)
    assert (again.status, again.result, again.error, again.end_reason) == ("completed", "zero", None, "completed")
    late = await any_store.complete_subtask(task_id, 1, result="late")
    assert (late.status, late.result, late.end_reason) == ("skipped", None, "budget")
    assert await any_store.events_after(task_id, 0) == events  # nothing was told
    snap = await any_store.snapshot(task_id)
    assert [(s["status"], s["end_reason"]) for s in snap["subtasks"]] == [
        ("completed", "completed"), ("skipped", "budget"), ("pending", None)]


async def test_a_late_settlement_does_not_complete_a_canceled_subtask(any_store: RunStore) -> None:
    task_id = await _planned(any_store, 1)
    (res,) = await any_store.reserve([ReserveRequest(task_id=task_id, user_id=None, kind="subtask", subtask=0, tier=1,
                                                     model="m", attempt=1, amount=0.01, daily_budget=None)])
    assert isinstance(res, Reservation)
    canceled = await any_store.end_subtask(task_id, 0, status="canceled", error="canceled")
    assert canceled.status == "canceled"
    sub = await any_store.settle(task_id, res, 0, Settlement(status="ok", cost_usd=0.001, complete_with="late"))
    assert sub is not None and (sub.status, sub.result, sub.end_reason) == ("canceled", None, "canceled")
    assert sub.cost_usd == pytest.approx(0.001)  # its cost is booked all the same


async def test_a_plan_saved_after_the_task_was_canceled_is_not_kept(any_store: RunStore) -> None:
    task_id = await _task_at(any_store, "planning")
    assert await any_store.set_status(task_id, TaskStatus.canceled)
    assert not await any_store.save_plan(task_id, reasoning="late", subtasks=[_sub(0)], prompt_versions={},
                                         status=TaskStatus.planned)
    snap = await any_store.snapshot(task_id)
    assert (snap["status"], snap["subtasks"], snap["end_reason"]) == ("canceled", [], "canceled")


# the doors read the typed reason ------------------------------------------------------


async def test_the_doors_read_why_from_end_reason_not_from_the_error_text(any_store: RunStore) -> None:
    budget = await _task_at(any_store, "planning")
    await any_store.set_status(budget, TaskStatus.failed, error="no room left", reason=EndReason.budget)
    provider = await _task_at(any_store, "planning")
    await any_store.set_status(provider, TaskStatus.failed, error="the budget model failed",
                               reason=EndReason.failed_provider)
    assert failure(await any_store.snapshot(budget)) == "budget"
    assert failure(await any_store.snapshot(provider)) == "failed"


# one authenticate() -------------------------------------------------------------------


async def _at_every_door(served: Any, token: str) -> dict[str, tuple[int, str]]:
    """(status, message) of one authenticated request at each door and a route."""
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        chat = await http.get("/v1/models", headers=auth)
        mcp = await http.post("/mcp", headers={**auth, "Accept": "application/json, text/event-stream",
                                               "MCP-Protocol-Version": "2025-06-18"},
                              json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        a2a = await http.post("/a2a", headers={**auth, "A2A-Version": "1.0"},
                              json={"jsonrpc": "2.0", "id": 7, "method": "GetTask", "params": {"id": "t_none"}})
        route = await http.get("/v1/tasks", headers=auth)

    def said(r: httpx.Response) -> str:
        body = r.json()
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message"))
        return str(body.get("error_description") or err or "")

    return {name: (r.status_code, said(r) if r.status_code >= 400 else "")
            for name, r in (("chat", chat), ("mcp", mcp), ("a2a", a2a), ("route", route))}


async def test_every_door_authenticates_through_the_token_cache(served: Any) -> None:
    tokens = served.app.state.tokens
    now = [1000.0]
    tokens.clock = lambda: now[0]  # the cache's clock, stopped: an entry lives until it is moved
    store = served.app.state.store
    lookups: list[str] = []
    real = store.principal_for_token

    async def counted(token: str) -> Any:
        lookups.append(token)
        return await real(token)

    store.principal_for_token = counted
    answers = await _at_every_door(served, served.alice)
    assert {name: status for name, (status, _) in answers.items()} == {
        "chat": 200, "mcp": 200, "a2a": 200, "route": 200}
    assert lookups == [served.alice]  # one lookup for four doors: the rest came from memory

    (row,) = [t for t, name in list_tokens(store.engine) if name == "alice"]
    revoke_token(store.engine, row.id)
    now[0] += tokens.ttl_s  # the entry has lived its time: the next request reads the store again
    refused = await _at_every_door(served, served.alice)
    assert refused == dict.fromkeys(("chat", "mcp", "a2a", "route"), (401, "invalid or revoked token"))
    assert lookups == [served.alice] * 2  # the refusal is remembered too


# the migration ------------------------------------------------------------------------


def test_migration_0009_fills_the_end_reason_of_rows_that_ended_before(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0008")
    engine = make_engine(url)
    tasks = {  # id: (status, error) -> the reason it shows
        "t_done": ("completed", None, "completed"),
        "t_cut": ("failed", "budget of $0.01 exhausted: 2 subtask(s) skipped for budget", "budget"),
        "t_plan": ("failed", "could not plan: 3 errors", "failed_plan"),
        "t_model": ("failed", "could not plan: the planner model failed: 500", "failed_provider"),
        "t_crash": ("failed", "internal error: KeyError", "internal"),
        "t_some": ("partial", "1 of 3 subtasks did not complete", "failed_subtasks"),
        "t_stop": ("canceled", "canceled by request", "canceled"),
        "t_open": ("executing", None, None),
    }
    with engine.begin() as conn:
        for tid, (status, error, _) in tasks.items():
            conn.execute(text("INSERT INTO task (id, prompt, status, priority, approve, budget_usd, error, "
                              "total_cost_usd, reserved_usd, cancel_requested, event_seq, created_at, updated_at) "
                              "VALUES (:id, 'p', :st, 2, 1, 1.0, :err, 0, 0, 0, 0, '2026-01-01', '2026-01-01')"),
                         {"id": tid, "st": status, "err": error})
        for i, (status, error) in enumerate([("completed", None), ("skipped", "skipped: budget exhausted (x)"),
                                             ("skipped", "skipped: dependency 0 failed"), ("running", None)]):
            conn.execute(text('INSERT INTO subtask (id, task_id, "index", description, tier_hint, depends_on, '
                              "status, error, attempts, cost_usd, input_tokens, output_tokens, kind) "
                              "VALUES (:id, 't_cut', :i, 'd', 1, '[]', :st, :err, 0, 0, 0, 0, 'llm')"),
                         {"id": f"s_{i}", "i": i, "st": status, "err": error})
    upgrade(url)
    with engine.connect() as conn:
        got = {r[0]: r[1] for r in conn.execute(text("SELECT id, end_reason FROM task")).all()}
        subs = [r[0] for r in conn.execute(text('SELECT end_reason FROM subtask ORDER BY "index"')).all()]
    engine.dispose()
    assert got == {tid: reason for tid, (_, _, reason) in tasks.items()}
    assert subs == ["completed", "budget", "skipped_dependency", None]


# the executor writes why -------------------------------------------------------------


async def test_the_executor_writes_why_each_part_ended(store: RunStore) -> None:
    def answer(model: str, msgs: list[Message]) -> Any:
        if "<subtask>\nB\n" in msgs[-1]["content"]:
            return transient(400)
        return kind_answer(model, msgs)

    ex = executor(store, FakeLLM(answer=answer), max_replans=0)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", []), ("B", []), ("C", [1])))
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert (snap["status"], snap["end_reason"]) == ("partial", "failed_subtasks")
    assert [(s["status"], s["end_reason"]) for s in snap["subtasks"]] == [
        ("completed", "completed"), ("failed", "failed_provider"), ("skipped", "skipped_dependency")]


@pytest.mark.parametrize(("budget", "status", "reason"), [(0.0001, "failed", "budget"), (1.0, "completed", "completed")])
async def test_a_plan_that_cannot_be_paid_for_ends_for_budget(store: RunStore, budget: float, status: str,
                                                              reason: str) -> None:
    ex = executor(store, FakeLLM(answer=kind_answer))
    task = await store.create_task(prompt="p", budget_usd=budget)
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert (snap["status"], snap["end_reason"]) == (status, reason)
    assert failure(snap) == (None if status == "completed" else "budget")


async def test_subtasks_skipped_for_budget_say_so_down_the_chain(store: RunStore) -> None:
    p = plan(("A", []), ("B", [0]))
    ex = executor(store, FakeLLM(answer=kind_answer), max_replans=0)
    task = await store.create_task(prompt="p", budget_usd=1e-9, plan_in=p)
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert (snap["status"], snap["end_reason"]) == ("failed", "budget")
    assert [(s["status"], s["end_reason"]) for s in snap["subtasks"]] == [("skipped", "budget"), ("skipped", "budget")]
