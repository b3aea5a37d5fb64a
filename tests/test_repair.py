"""Deterministic plan repair: a table of broken plans and what is fixed without a model,
then the decomposer calling the model only for what remains."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from compound.core.errors import PlanInvalid
from compound.llm.base import Completion, Message
from compound.planner.decompose import decompose
from compound.planner.repair import repair_plan
from tests.fixtures.fakes import FakeLLM


def _plan(*deps: Any) -> dict[str, Any]:
    return {"subtasks": [{"description": f"step {i}", "tier_hint": 1, "depends_on": d}
                         for i, d in enumerate(deps)]}


CASES = [
    # (deps per subtask in, deps per subtask out, warnings)
    ([[], [0]], [[], [0]], []),
    ([[0]], [[]], ["subtask 0 depended on itself; that dependency was dropped"]),
    ([[], [1, 0]], [[], [0]], ["subtask 1 depended on itself; that dependency was dropped"]),
    ([[], [0, 5]], [[], [0]],
     ["subtask 1 depended on 5, but the plan has 2 subtasks; that dependency was dropped"]),
    ([[-1], []], [[], []],
     ["subtask 0 depended on -1, but the plan has 2 subtasks; that dependency was dropped"]),
    ([[], [0, 0]], [[], [0]], ["subtask 1 listed dependency 0 twice; the duplicate was dropped"]),
    ([[], [], [2, 0, 9, 0, 1]], [[], [], [0, 1]],
     ["subtask 2 depended on itself; that dependency was dropped",
      "subtask 2 depended on 9, but the plan has 3 subtasks; that dependency was dropped",
      "subtask 2 listed dependency 0 twice; the duplicate was dropped"]),
    # left for validation and the model: a cycle, a non-integer, a boolean
    ([[1], [0]], [[1], [0]], []),
    ([["1"]], [["1"]], []),
    ([[True]], [[True]], []),
]


@pytest.mark.parametrize(("deps_in", "deps_out", "warnings"), CASES)
def test_repair_table(deps_in: list[Any], deps_out: list[Any], warnings: list[str]) -> None:
    data = _plan(*deps_in)
    before = copy.deepcopy(data)
    fixed, got = repair_plan(data)
    assert got == warnings
    assert [s["depends_on"] for s in fixed["subtasks"]] == deps_out
    assert data == before  # pure: the input is untouched
    if not warnings:
        assert fixed is data


@pytest.mark.parametrize("data", [None, [], "x", {"subtasks": None}, {"subtasks": [1, "a", {"depends_on": 3}]}])
def test_repair_leaves_what_is_not_a_plan_to_validation(data: Any) -> None:
    assert repair_plan(data) == (data, [])


def caller(fake: FakeLLM):  # type: ignore[no-untyped-def]
    async def call(messages: list[Message], schema: dict | None) -> Completion:  # type: ignore[type-arg]
        return await fake.complete(model="m", messages=messages, max_tokens=500, json_schema=schema)
    return call


async def test_self_dependency_and_out_of_range_are_fixed_without_a_repair_call() -> None:
    fake = FakeLLM(queue=[json.dumps(_plan([0], [0, 7], [1, 1]))])
    warnings: list[str] = []
    plan = await decompose(caller(fake), "r", max_subtasks=5, warnings=warnings)
    assert plan.deps() == [[], [0], [1]]
    assert len(fake.calls) == 1
    assert len(warnings) == 3 and "itself" in warnings[0] and "7" in warnings[1] and "twice" in warnings[2]


async def test_the_model_repairs_only_what_remains() -> None:
    broken = _plan([1, 1], [0], [2])  # a cycle 0 <-> 1 (not fixable) plus fixable noise
    fake = FakeLLM(queue=[json.dumps(broken), json.dumps(_plan([], [0], [1]))])
    warnings: list[str] = []
    plan = await decompose(caller(fake), "r", max_subtasks=5, warnings=warnings)
    assert plan.deps() == [[], [0], [1]]
    assert len(fake.calls) == 2
    asked = fake.calls[1].messages[-1]["content"]
    assert "cycle" in asked
    assert "itself" not in asked and "twice" not in asked  # fixed already: not asked of the model
    assert warnings == []  # the first answer's fixes were not used: the repaired plan needed none


async def test_fixes_on_the_repaired_answer_are_reported() -> None:
    fake = FakeLLM(queue=["not json", json.dumps(_plan([], [1, 0]))])
    warnings: list[str] = []
    plan = await decompose(caller(fake), "r", max_subtasks=5, warnings=warnings)
    assert plan.deps() == [[], [0]]
    assert warnings == ["subtask 1 depended on itself; that dependency was dropped"]


async def test_what_cannot_be_fixed_still_fails_after_one_repair() -> None:
    blank = {"subtasks": [{"description": " ", "tier_hint": 1, "depends_on": [0]}]}
    fake = FakeLLM(queue=[json.dumps(blank), json.dumps(blank)])
    with pytest.raises(PlanInvalid) as exc:
        await decompose(caller(fake), "r", max_subtasks=5)
    assert any("blank description" in e for e in exc.value.errors)
    assert not any("itself" in e for e in exc.value.errors)


async def test_the_fixes_are_saved_as_warnings_in_the_snapshot_and_the_cli_tree(any_store: Any) -> None:
    from rich.console import Console

    from compound.cli.live import render_snapshot
    from tests.test_executor import executor, kind_answer

    broken = json.dumps(_plan([0], [0, 3]))

    def answer(model: str, messages: list[Message]) -> str:
        return broken if "planner" in messages[0]["content"] else kind_answer(model, messages)

    fake = FakeLLM(answer=answer)
    task = await any_store.create_task(prompt="a then b", budget_usd=1.0)
    await executor(any_store, fake).run_task(task.id)
    snap = await any_store.snapshot(task.id)
    assert snap["status"] == "completed"
    assert [s["depends_on"] for s in snap["subtasks"]] == [[], [0]]
    assert snap["warnings"] == ["subtask 0 depended on itself; that dependency was dropped",
                                "subtask 1 depended on 3, but the plan has 2 subtasks; that dependency was dropped"]
    console = Console(width=200, record=True)
    console.print(render_snapshot(snap))
    assert "warning: subtask 1 depended on 3" in console.export_text()
    untouched = await any_store.create_task(prompt="x", budget_usd=1.0)
    assert (await any_store.snapshot(untouched.id))["warnings"] == []


async def test_warnings_in_the_http_snapshot(api: Any, sim: Any) -> None:
    broken = json.dumps(_plan([], [1, 0, 0]))
    sim.answer("planner", broken, broken, broken)  # the same answer again if a loaded machine times a call out
    r = await api.http.post("/v1/tasks", json={"prompt": "a then b"}, headers=api.auth(api.alice))
    assert r.status_code == 202
    snap = await api.wait(r.json()["id"], api.alice, timeout=60)
    assert snap["status"] == "completed"
    assert [s["depends_on"] for s in snap["subtasks"]] == [[], [0]]
    assert snap["warnings"] == ["subtask 1 depended on itself; that dependency was dropped",
                                "subtask 1 listed dependency 0 twice; the duplicate was dropped"]
