"""What small planner models answer, scripted through the simulator and run by the
executor end to end: every task gets a plan and runs it, with the warning that says
what was fixed, flagged, or fallen back on; none fails for want of a plan."""

from __future__ import annotations

import json
from typing import Any

import pytest

from compound.core.settings import Settings
from compound.executor.service import Executor
from compound.llm import LLMClient
from compound.planner.decompose import FALLBACK_DESCRIPTION, FALLBACK_TIER
from compound.planner.repair import kind_of
from compound.simulator import Simulator
from compound.store import open_store


def _s(description: Any, deps: Any = None, tier: Any = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "tier_hint": tier}
    if deps is not None:
        out["depends_on"] = deps
    return out


def _plan(*subtasks: dict[str, Any]) -> str:
    return json.dumps({"reasoning": "scripted", "subtasks": list(subtasks)})


NO_SUBTASKS = json.dumps({"reasoning": "nothing to do", "subtasks": []})

ANSWERS = [
    # (name, planner answers in order, expected (description, tier, deps) run, warning kinds)
    ("an empty string in depends_on", [_plan(_s("find a", []), _s("use a", ["", 0]))],
     [("find a", 1, []), ("use a", 1, [0])], ["dependency not an index"]),
    ("indices as text", [_plan(_s("find a", []), _s("find b", []), _s("compare", ["0", "1"], 2))],
     [("find a", 1, []), ("find b", 1, []), ("compare", 2, [0, 1])], ["dependency as text", "dependency as text"]),
    ("a tier of 4", [_plan(_s("hard part", [], 4), _s("write up", [0], 2))],
     [("hard part", 3, []), ("write up", 2, [0])], ["tier out of range"]),
    ("tiers as text", [_plan(_s("a", [], "1"), _s("b", [0], "3"))],
     [("a", 1, []), ("b", 3, [0])], ["tier as text", "tier as text"]),
    ("a repeated subtask", [_plan(_s("look up a", []), _s("look up a", []), _s("summarise", [0, 1]))],
     [("look up a", 1, []), ("summarise", 1, [0])], ["duplicate subtask"]),
    ("an empty subtask", [_plan(_s("look up a", []), _s("", [0]), _s("summarise", [1]))],
     [("look up a", 1, []), ("summarise", 1, [0])], ["empty subtask"]),
    ("no depends_on at all", [_plan(_s("a"), _s("b"))], [("a", 1, []), ("b", 1, [])], []),
    ("a final step that joins only one of three branches",
     [_plan(_s("battery", []), _s("price", []), _s("camera", []), _s("recommend", [0], 2))],
     [("battery", 1, []), ("price", 1, []), ("camera", 1, []), ("recommend", 2, [0])], ["missing join"]),
    ("no subtasks, twice", [NO_SUBTASKS, NO_SUBTASKS],
     [(FALLBACK_DESCRIPTION, FALLBACK_TIER, [])], ["fallback"]),
    ("prose, twice", ["I would first research the topic.", "Sure! Here is the plan: research, then write."],
     [(FALLBACK_DESCRIPTION, FALLBACK_TIER, [])], ["fallback"]),
    ("no subtasks, then a plan with a tier of 5", [NO_SUBTASKS, _plan(_s("a", [], 5))],
     [("a", 3, [])], ["tier out of range"]),
]


@pytest.mark.parametrize(("answers", "expected", "kinds"), [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS])
async def test_every_scripted_answer_ends_with_a_plan_that_runs(
        sim: Simulator, sim_settings: Settings, sim_client: LLMClient,
        answers: list[str], expected: list[tuple[str, int, list[int]]], kinds: list[str]) -> None:
    sim.answer("planner", *answers)
    async with open_store(sim_settings.database_url) as store:
        ex = Executor(settings=sim_settings, store=store, client=sim_client)
        task = await store.create_task(prompt="compare the phones and recommend one", budget_usd=1.0)
        await ex.run_task(task.id)
        snap = await store.snapshot(task.id)
        await ex.stop()
    assert snap["status"] == "completed", snap["error"]
    assert [(s["description"], s["tier_hint"], s["depends_on"]) for s in snap["subtasks"]] == expected
    assert [kind_of(w) for w in snap["warnings"]] == kinds
    assert len(sim.calls("planner")) == len(answers)
    assert len(sim.calls("worker")) == len(expected)  # every subtask of the plan ran
    if kinds == ["fallback"]:  # the one subtask is the request itself: the worker was given it
        assert "compare the phones and recommend one" in sim.calls("worker")[0]["text"]
