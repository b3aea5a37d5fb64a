"""Deterministic plan repair: a table of broken plans and what is fixed without a model,
then the decomposer calling the model only for what remains."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compound.core.errors import PlanInvalid
from compound.llm.base import Completion, Message
from compound.planner.decompose import FALLBACK_DESCRIPTION, FALLBACK_TIER, CallFn, decompose
from compound.planner.plan import missing_join
from compound.planner.repair import KINDS, kind_of, repair_plan
from compound.planner.validate import validate_plan
from tests.fixtures.fakes import FakeLLM


def _plan(*deps: Any) -> dict[str, Any]:
    return {"subtasks": [{"description": f"step {i}", "tier_hint": 1, "depends_on": d}
                         for i, d in enumerate(deps)]}


CASES = [
    # (deps per subtask in, deps per subtask out, warnings)
    ([[], [0]], [[], [0]], []),
    ([[0]], [[]], ["self-dependency: subtask 0 depended on itself; that dependency was dropped"]),
    ([[], [1, 0]], [[], [0]], ["self-dependency: subtask 1 depended on itself; that dependency was dropped"]),
    ([[], [0, 5]], [[], [0]],
     ["dependency out of range: subtask 1 depended on 5, but the plan has 2 subtasks; that dependency was dropped"]),
    ([[-1], []], [[], []],
     ["dependency out of range: subtask 0 depended on -1, but the plan has 2 subtasks; "
      "that dependency was dropped"]),
    ([[], [0, 0]], [[], [0]], ["duplicate dependency: subtask 1 listed dependency 0 twice; the duplicate was dropped"]),
    ([[], [], [2, 0, 9, 0, 1]], [[], [], [0, 1]],
     ["self-dependency: subtask 2 depended on itself; that dependency was dropped",
      "dependency out of range: subtask 2 depended on 9, but the plan has 3 subtasks; that dependency was dropped",
      "duplicate dependency: subtask 2 listed dependency 0 twice; the duplicate was dropped"]),
    # indices as text or whole floats are read; anything else is dropped
    ([[], ["0"]], [[], [0]], ["dependency as text: subtask 1 depended on '0'; read as 0"]),
    ([[], [" 0 "]], [[], [0]], ["dependency as text: subtask 1 depended on ' 0 '; read as 0"]),
    ([[], [0.0]], [[], [0]], ["dependency as text: subtask 1 depended on 0.0; read as 0"]),
    ([[], [""]], [[], []],
     ["dependency not an index: subtask 1 depended on '', which is not a subtask index; that dependency was dropped"]),
    ([[], [None, 0]], [[], [0]],
     ["dependency not an index: subtask 1 depended on None, which is not a subtask index; "
      "that dependency was dropped"]),
    ([[], ["step 0"]], [[], []],
     ["dependency not an index: subtask 1 depended on 'step 0', which is not a subtask index; "
      "that dependency was dropped"]),
    ([[], [0.5]], [[], []],
     ["dependency not an index: subtask 1 depended on 0.5, which is not a subtask index; "
      "that dependency was dropped"]),
    ([[True]], [[]],
     ["dependency not an index: subtask 0 depended on True, which is not a subtask index; "
      "that dependency was dropped"]),
    ([[], ["1"]], [[], []],
     ["dependency as text: subtask 1 depended on '1'; read as 1",
      "self-dependency: subtask 1 depended on itself; that dependency was dropped"]),
    # depends_on not a list: one index, or indices in a string
    ([[], 0], [[], [0]], ["depends_on not a list: subtask 1 had depends_on 0; read as a list of 1"]),
    ([[], [], "0, 1"], [[], [], [0, 1]],
     ["depends_on not a list: subtask 2 had depends_on '0, 1'; read as a list of 2",
      "dependency as text: subtask 2 depended on '0'; read as 0",
      "dependency as text: subtask 2 depended on ' 1'; read as 1"]),
    ([[], ""], [[], []], ["depends_on not a list: subtask 1 had depends_on ''; read as a list of 0"]),
    # missing or null depends_on is the contract's default: no dependencies, no warning
    ([[], None], [[], None], []),
    # left for validation and the model: a cycle
    ([[1], [0]], [[1], [0]], []),
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
    else:
        assert all(kind_of(w) in KINDS for w in got)
        validate_plan(fixed, max_subtasks=10)  # what the repair fixed now validates


TIERS = [
    # (tier_hint in, tier_hint out, warnings)
    (1, 1, []),
    (3, 3, []),
    (4, 3, ["tier out of range: subtask 0 had tier_hint 4; clamped to 3"]),
    (12, 3, ["tier out of range: subtask 0 had tier_hint 12; clamped to 3"]),
    (0, 1, ["tier out of range: subtask 0 had tier_hint 0; clamped to 1"]),
    (-2, 1, ["tier out of range: subtask 0 had tier_hint -2; clamped to 1"]),
    ("2", 2, ["tier as text: subtask 0 had tier_hint '2'; read as 2"]),
    (2.0, 2, ["tier as text: subtask 0 had tier_hint 2.0; read as 2"]),
    ("5", 3, ["tier as text: subtask 0 had tier_hint '5'; read as 5",
              "tier out of range: subtask 0 had tier_hint 5; clamped to 3"]),
    ("high", 2, ["tier not a number: subtask 0 had tier_hint 'high'; it runs on tier 2"]),
    (True, 2, ["tier not a number: subtask 0 had tier_hint True; it runs on tier 2"]),
    (2.5, 2, ["tier not a number: subtask 0 had tier_hint 2.5; it runs on tier 2"]),
]


@pytest.mark.parametrize(("tier_in", "tier_out", "warnings"), TIERS)
def test_repair_tiers(tier_in: Any, tier_out: int, warnings: list[str]) -> None:
    data = {"subtasks": [{"description": "a", "tier_hint": tier_in, "depends_on": []}]}
    fixed, got = repair_plan(data)
    assert got == warnings
    assert validate_plan(fixed, max_subtasks=3).subtasks[0].tier_hint == tier_out


def test_a_missing_or_null_tier_takes_the_contracts_default() -> None:
    for item in ({"description": "a"}, {"description": "a", "tier_hint": None}):
        fixed, got = repair_plan({"subtasks": [item]})
        assert got == []
        assert validate_plan(fixed, max_subtasks=3).subtasks[0].tier_hint == 1


def _sub(description: Any, deps: Any = None, tier: int = 1) -> dict[str, Any]:
    return {"description": description, "tier_hint": tier, "depends_on": deps or []}


SHAPES = [
    # (subtasks in, (description, tier, deps) out, warning kinds)
    # an empty subtask is dropped and its dependents inherit its dependencies
    ([_sub("a"), _sub(""), _sub("c", [1])], [("a", 1, []), ("c", 1, [])], ["empty subtask"]),
    ([_sub("a"), _sub("  ", [0]), _sub("c", [1])], [("a", 1, []), ("c", 1, [0])], ["empty subtask"]),
    ([_sub("a"), _sub(None, [0]), _sub(3, [1]), _sub("d", [2])], [("a", 1, []), ("d", 1, [0])],
     ["empty subtask", "empty subtask"]),
    ([{"tier_hint": 1}, _sub("b", [0]), _sub("c", [0, 1])], [("b", 1, []), ("c", 1, [0])], ["empty subtask"]),
    # a repeated description is merged into its first: dependencies joined, the higher tier kept
    ([_sub("a"), _sub("b"), _sub("A ", [1], tier=3), _sub("d", [2])],
     [("a", 3, [1]), ("b", 1, []), ("d", 1, [0])], ["duplicate subtask"]),
    ([_sub("a"), _sub("b"), _sub("a", [1])], [("a", 1, [1]), ("b", 1, [])], ["duplicate subtask"]),
    ([_sub("a"), _sub("a", [0]), _sub("c", [0, 1])], [("a", 1, []), ("c", 1, [0])], ["duplicate subtask"]),
    # both, and index fixes on the way (reported in the model's numbering)
    ([_sub("a"), _sub(""), _sub("a"), _sub("d", ["2", 1, 9])], [("a", 1, []), ("d", 1, [0])],
     ["empty subtask", "dependency as text", "dependency out of range", "duplicate subtask"]),
    # bare text for a subtask
    (["look up a", "look up b", _sub("compare", [0, 1], tier=2)],
     [("look up a", 1, []), ("look up b", 1, []), ("compare", 2, [0, 1])],
     ["subtask as text", "subtask as text"]),
]


@pytest.mark.parametrize(("subtasks", "expected", "kinds"), SHAPES)
def test_repair_drops_and_merges_subtasks(subtasks: list[Any], expected: list[tuple[str, int, list[int]]],
                                          kinds: list[str]) -> None:
    data = {"reasoning": "r", "subtasks": subtasks}
    before = copy.deepcopy(data)
    fixed, got = repair_plan(data)
    assert [kind_of(w) for w in got] == kinds
    plan = validate_plan(fixed, max_subtasks=10)
    assert [(s.description, s.tier_hint, s.depends_on) for s in plan.subtasks] == expected
    assert data == before


def test_a_plan_of_only_empty_subtasks_is_left_empty_for_validation() -> None:
    fixed, got = repair_plan({"subtasks": [_sub(""), _sub(None)]})
    assert fixed["subtasks"] == [] and [kind_of(w) for w in got] == ["empty subtask", "empty subtask"]
    with pytest.raises(PlanInvalid, match="no subtasks"):
        validate_plan(fixed, max_subtasks=3)


@pytest.mark.parametrize(("data", "kinds"), [
    ([_sub("a"), _sub("b", [0])], ["plan as a list"]),
    ({"steps": [_sub("a"), _sub("b", [0])]}, ["plan as a list"]),
    ({"reasoning": 5, "subtasks": [_sub("a"), _sub("b", [0])]}, ["reasoning not text"]),
])
def test_repair_reads_what_the_plans_shape_got_wrong(data: Any, kinds: list[str]) -> None:
    fixed, got = repair_plan(data)
    assert [kind_of(w) for w in got] == kinds
    assert validate_plan(fixed, max_subtasks=3).deps() == [[], [0]]


@pytest.mark.parametrize("data", [None, "x", {"subtasks": None}, {"subtasks": [1, "a", {"depends_on": 3}]},
                                  {"answer": "no plan"}])
def test_repair_leaves_what_is_not_a_plan_to_validation(data: Any) -> None:
    assert repair_plan(data) == (data, [])


def test_kind_of_reads_the_kind_a_warning_starts_with() -> None:
    assert kind_of("tier out of range: subtask 0 had tier_hint 4; clamped to 3") == "tier out of range"
    assert kind_of("fallback: the planner gave no usable plan") == "fallback"
    assert kind_of("something else: entirely") == "other"


MISSING_JOIN = [
    # (deps, flagged)
    ([[], [], [], [0, 1, 2]], None),  # a full join
    ([[], [], []], None),  # independent steps, no join
    ([[], [0], [1]], None),  # a chain
    ([[], [], [], [0]], (3, [0], [1, 2])),  # a "recommend" that reads one of three comparisons
    ([[], [], [], [0, 1]], (3, [0, 1], [2])),
    ([[], [0], [], [1]], (3, [1], [2])),  # a chain that leaves a branch behind
    ([[], [0], [0], [1, 2]], None),  # fan-out then join
    ([[], []], None),  # too small to say
]


@pytest.mark.parametrize(("deps", "flagged"), MISSING_JOIN)
def test_missing_join(deps: list[list[int]], flagged: Any) -> None:
    assert missing_join(deps) == flagged


def caller(fake: FakeLLM) -> CallFn:
    async def call(messages: list[Message], schema: dict[str, Any] | None) -> Completion:
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
    assert warnings == ["self-dependency: subtask 1 depended on itself; that dependency was dropped"]


async def test_what_cannot_be_fixed_falls_back_after_one_repair() -> None:
    cycle = _plan([1, 1], [0])
    fake = FakeLLM(queue=[json.dumps(cycle), json.dumps(cycle)])
    warnings: list[str] = []
    plan = await decompose(caller(fake), "r", max_subtasks=5, warnings=warnings)
    assert len(fake.calls) == 2
    assert [(s.description, s.tier_hint, s.depends_on) for s in plan.subtasks] == [
        (FALLBACK_DESCRIPTION, FALLBACK_TIER, [])]
    assert [kind_of(w) for w in warnings] == ["fallback"]  # the unused answers' fixes are not reported
    assert "cycle" in warnings[0] and "one subtask on tier 2" in warnings[0]


async def test_without_the_fallback_what_cannot_be_fixed_fails_after_one_repair() -> None:
    cycle = _plan([1, 1], [0])
    fake = FakeLLM(queue=[json.dumps(cycle), json.dumps(cycle)])
    with pytest.raises(PlanInvalid) as exc:
        await decompose(caller(fake), "r", max_subtasks=5, fallback=False)
    assert any("cycle" in e for e in exc.value.errors)
    assert not any("listed dependency" in e for e in exc.value.errors)  # the duplicate was fixed, not reported


async def test_the_fallback_warning_names_at_most_three_errors() -> None:
    bad = {"subtasks": [1, 2, 3, 4, 5, 6]}  # 7 errors: six are not objects, and too many
    fake = FakeLLM(queue=[json.dumps(bad), json.dumps(bad)])
    warnings: list[str] = []
    await decompose(caller(fake), "r", max_subtasks=5, warnings=warnings)
    assert len(warnings) == 1 and "at most 5" in warnings[0] and "and 4 more)" in warnings[0]


async def test_a_final_step_that_joins_only_some_branches_is_flagged_not_changed() -> None:
    fan_in = _plan([], [], [], [0])
    fake = FakeLLM(queue=[json.dumps(fan_in)])
    warnings: list[str] = []
    plan = await decompose(caller(fake), "r", max_subtasks=5, warnings=warnings)
    assert plan.deps() == [[], [], [], [0]]
    assert warnings == ["missing join: the last subtask (3) uses subtask 0 but not subtasks 1, 2, whose results "
                        "no other subtask uses; if it should combine them all, its depends_on lacks them"]


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
    assert snap["warnings"] == ["self-dependency: subtask 0 depended on itself; that dependency was dropped",
                                "dependency out of range: subtask 1 depended on 3, but the plan has 2 subtasks; "
                                "that dependency was dropped"]
    console = Console(width=200, record=True)
    console.print(render_snapshot(snap))
    assert "warning: dependency out of range: subtask 1 depended on 3" in console.export_text()
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
    assert snap["warnings"] == ["self-dependency: subtask 1 depended on itself; that dependency was dropped",
                                "duplicate dependency: subtask 1 listed dependency 0 twice; the duplicate was dropped"]


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 6), st.floats(allow_nan=True), st.text(max_size=4),
                  st.sampled_from(["0", "1", " 2 ", "step 1", ""]))
_ITEM = st.one_of(
    st.text(max_size=6),
    st.integers(),
    st.fixed_dictionaries({}, optional={
        "description": st.one_of(st.sampled_from(["a", "b", "A ", "", "  "]), _JUNK),
        "tier_hint": _JUNK,
        "depends_on": st.one_of(_JUNK, st.lists(_JUNK, max_size=4)),
    }),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(_ITEM, max_size=6), st.fixed_dictionaries({"subtasks": st.lists(_ITEM, max_size=6)},
                                                                    optional={"reasoning": _JUNK})))
def test_repair_never_crashes_and_what_it_returns_validates_or_is_named(data: Any) -> None:
    before = copy.deepcopy(data)
    fixed, got = repair_plan(data)
    assert all(kind_of(w) in KINDS for w in got)
    try:
        plan = validate_plan(fixed, max_subtasks=6)
    except PlanInvalid as exc:
        assert exc.errors  # what is left is said in words, for the repair call
    else:
        assert all(1 <= s.tier_hint <= 3 for s in plan.subtasks)
    assert repr(data) == repr(before)  # pure (repr: a NaN is not equal to itself)
