"""Plan validation, waves and the critical path: table tests, hostile plans included."""

from __future__ import annotations

from typing import Any

import pytest

from compound.core.errors import PlanInvalid
from compound.planner.decompose import parse_plan_text
from compound.planner.plan import critical_path, critical_path_length, waves
from compound.planner.validate import validate_plan


def s(desc: str = "do", tier: Any = 1, deps: Any = None) -> dict[str, Any]:
    return {"description": desc, "tier_hint": tier, "depends_on": deps or []}


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({"subtasks": [s(deps=[0])]}, ["subtask 0 depends on itself"]),
        ({"subtasks": [s(), s(deps=[7])]}, ["subtask 1 depends on 7, but the plan has 2 subtasks"]),
        ({"subtasks": [s(deps=[1]), s(deps=[0])]}, ["cycle"]),
        ({"subtasks": [s(deps=[2]), s(deps=[0]), s(deps=[1])]}, ["0 -> 2 -> 1 -> 0", "cycle"]),
        ({"subtasks": []}, ["no subtasks"]),
        ({"subtasks": [s() for _ in range(300)]}, ["300 subtasks; at most 20"]),
        ({"subtasks": [s(desc="   ")]}, ["description"]),
        ({"subtasks": [s(tier=4)]}, ["tier_hint"]),
        ({"subtasks": [s(tier="high")]}, ["tier_hint"]),
        ({"subtasks": [s(deps="0")]}, ["depends_on"]),
        ({"subtasks": [s(deps=[-1])]}, ["-1"]),
        ({"subtasks": "everything"}, ["'subtasks' must be a list"]),
        ({"steps": []}, ["no 'subtasks'"]),
        ([1, 2], ["JSON object"]),
        ("prose", ["JSON object"]),
    ],
)
def test_invalid_plans_are_explained(plan: Any, expected: list[str]) -> None:
    with pytest.raises(PlanInvalid) as info:
        validate_plan(plan, max_subtasks=20)
    text = " | ".join(info.value.errors)
    for fragment in expected:
        assert fragment in text, text


def test_every_error_is_reported_at_once() -> None:
    plan = {"subtasks": [s(deps=[0]), s(desc="", deps=[9]), s(tier=0)]}
    with pytest.raises(PlanInvalid) as info:
        validate_plan(plan, max_subtasks=20)
    assert len(info.value.errors) >= 4


def test_a_valid_plan_passes() -> None:
    plan = validate_plan({"reasoning": "r", "subtasks": [s(), s(deps=[0]), s(tier=3, deps=[0, 1])]},
                         max_subtasks=20)
    assert [t.depends_on for t in plan.subtasks] == [[], [0], [0, 1]]
    assert plan.reasoning == "r"


@pytest.mark.parametrize(
    ("deps", "wave_list", "path"),
    [
        ([[]], [[0]], [0]),
        ([[], [], []], [[0, 1, 2]], [0]),
        ([[], [0], [1]], [[0], [1], [2]], [0, 1, 2]),
        ([[], [], [0, 1], [2]], [[0, 1], [2], [3]], [0, 2, 3]),
        ([[], [], [1], [2], [0, 3]], [[0, 1], [2], [3], [4]], [1, 2, 3, 4]),
    ],
)
def test_waves_and_critical_path(deps: list[list[int]], wave_list: list[list[int]], path: list[int]) -> None:
    assert waves(deps) == wave_list
    assert critical_path(deps) == path
    assert critical_path_length(deps) == len(path)


def test_weighted_critical_path_prefers_the_long_root() -> None:
    deps = [[], [], [1], [0, 2]]
    weight = {0: 10.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert critical_path(deps, weight.__getitem__) == [0, 3]
    assert critical_path_length(deps, weight.__getitem__) == 11.0


@pytest.mark.parametrize(
    "text",
    [
        '{"subtasks": [{"description": "a", "tier_hint": 1, "depends_on": []}]}',
        'Here is the plan:\n```json\n{"subtasks": [{"description": "a", "tier_hint": 1, "depends_on": []}]}\n```',
        '```\n{"subtasks": [{"description": "a", "tier_hint": 1, "depends_on": []}]}\n```',
        'Sure! {"subtasks": [{"description": "a {b}", "tier_hint": 1, "depends_on": []}]} Hope it helps.',
    ],
)
def test_plain_and_fenced_json_are_accepted(text: str) -> None:
    plan = validate_plan(parse_plan_text(text), max_subtasks=5)
    assert len(plan.subtasks) == 1


@pytest.mark.parametrize("text", ["", "   ", "I think you should first research it.", "{not json"])
def test_prose_is_refused(text: str) -> None:
    with pytest.raises(PlanInvalid):
        parse_plan_text(text)
