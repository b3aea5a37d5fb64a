"""Plans that adapt, through the public API and the simulator: optional dependencies,
re-runs that reuse unchanged results, and per-tier cascades."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from compound.core.errors import PlanInvalid
from compound.core.settings import Settings
from compound.executor.scheduler import Cause, Ended, run_dag
from compound.planner.repair import repair_plan
from compound.planner.validate import validate_plan
from compound.simulator import Failure, Simulator
from tests.fixtures.api import Api, serving


@pytest.fixture
def sim_settings(sim_settings: Settings) -> Settings:
    """These mechanisms' own outcomes, with no replanning round after a failure."""
    return sim_settings.model_copy(update={"max_replans": 0})


def _worker_subtasks(sim: Simulator) -> list[str]:
    """The <subtask> text of every worker call the simulator received, in order."""
    out = []
    for c in sim.calls("worker"):
        text = c["text"]
        out.append(text[text.index("<subtask>") + 9:text.index("</subtask>")].strip())
    return out


# optional dependencies ------------------------------------------------------------------


@pytest.mark.parametrize(("depends_on", "error"), [
    ([{"index": 0, "required": "no"}], "must be true or false"),
    ([{"index": 0, "optional": True}], "unknown key(s) optional"),
    ([{"required": False}], "which is not a subtask index"),
    ([{"index": 5, "required": False}], "depends on 5, but the plan has 2 subtasks"),
    ([{"index": 1, "required": False}], "depends on itself"),
])
def test_a_bad_dependency_entry_is_named(depends_on: list[Any], error: str) -> None:
    plan = {"subtasks": [{"description": "a"}, {"description": "b", "depends_on": depends_on}]}
    with pytest.raises(PlanInvalid) as exc:
        validate_plan(plan, max_subtasks=5)
    assert any(error in e for e in exc.value.errors), exc.value.errors


@pytest.mark.parametrize(("depends_on", "needs", "optional"), [
    ([0], [0], []),
    ([{"index": 0, "required": False}], [0], [0]),
    ([{"index": 0}], [0], []),
    ([{"index": 0, "required": True}], [0], []),
    ([{"index": 0, "required": False}, 0], [0], []),  # listed required once: required
])
def test_dependency_entries_read_as_required_unless_said(depends_on: list[Any], needs: list[int],
                                                         optional: list[int]) -> None:
    plan = validate_plan({"subtasks": [{"description": "a"}, {"description": "b", "depends_on": depends_on}]},
                         max_subtasks=5)
    assert plan.subtasks[1].needs == needs and plan.subtasks[1].optional == optional


def test_repair_keeps_optional_dependencies_through_renumbering() -> None:
    data = {"subtasks": [{"description": "a"}, {"description": ""},
                         {"description": "c", "depends_on": [{"index": "0", "required": False}, 1]}]}
    fixed, warnings = repair_plan(data)
    plan = validate_plan(fixed, max_subtasks=5)
    assert [s.description for s in plan.subtasks] == ["a", "c"]
    assert plan.subtasks[1].optional == [0] and warnings


async def test_an_optional_dependency_that_ended_does_not_skip_its_dependent() -> None:
    ran: list[int] = []
    skipped: dict[int, str] = {}

    async def run_one(i: int) -> Ended | None:
        ran.append(i)
        return Ended(Cause.failed, i, skipped=False) if i == 0 else None

    async def skip(i: int, _how: Ended, reason: str) -> None:
        skipped[i] = reason

    # 0 fails; 1 can do without it; 2 needs it; 3 needs 1 (which runs)
    await run_dag([[], [0], [0], [1]], ["pending"] * 4, run_one, skip, optional=[[], [0], [], []])
    assert sorted(ran) == [0, 1, 3] and skipped == {2: "skipped: dependency 0 failed"}
    # found failed on resume: the same
    ran.clear()
    skipped.clear()
    await run_dag([[], [0], [0]], ["failed", "pending", "pending"], run_one, skip, optional=[[], [0], []])
    assert ran == [1] and list(skipped) == [2]


async def test_an_optional_dependency_that_failed_still_lets_its_dependent_run(api: Api, sim: Simulator) -> None:
    sim.fail(Failure(400, kind="worker", message="the lookup service refused"))  # permanent: no retry
    plan = {"subtasks": [
        {"description": "Look up the price list", "depends_on": []},
        {"description": "Estimate the cost", "depends_on": [{"index": 0, "required": False}]},
        {"description": "Quote the exact price", "depends_on": [0]},
    ]}
    r = await api.http.post("/v1/tasks", json={"prompt": "what will it cost", "plan": plan},
                            headers=api.auth(api.alice))
    assert r.status_code == 202, r.text
    snap = await api.wait(r.json()["id"], api.alice)
    subs = snap["subtasks"]
    # the first plan's three (a replanning round may add subtasks after them)
    assert [s["status"] for s in subs[:3]] == ["failed", "completed", "skipped"]
    assert subs[1]["depends_on"] == [0] and subs[1]["optional_depends_on"] == [0]
    assert subs[2]["error"] == "skipped: dependency 0 failed"
    # the dependent's prompt names the missing input and why
    estimate = next(c["text"] for c in sim.calls("worker") if "Estimate the cost" in c["text"])
    assert '<dependency index="0" missing="true">' in estimate
    assert "Look up the price list" in estimate and "the lookup service refused" in estimate


# re-run with reuse ----------------------------------------------------------------------

PLAN: dict[str, Any] = {"reasoning": "two lookups, a check of the first, a summary", "subtasks": [
    {"description": "Find the population of Oslo", "tier_hint": 1, "depends_on": []},
    {"description": "Find the population of Lima", "tier_hint": 1, "depends_on": []},
    {"description": "Check the Oslo figure against a second source", "tier_hint": 1, "depends_on": [0]},
    {"description": "Summarise both populations", "tier_hint": 2, "depends_on": [1, 2]},
]}


async def _run(api: Api, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.http.post(path, json=body, headers=api.auth(token))
    assert r.status_code == 202, r.text
    return await api.wait(r.json()["id"], token)


async def test_a_rerun_with_one_edited_subtask_calls_only_it_and_its_descendants(api: Api, sim: Simulator) -> None:
    first = await _run(api, api.alice, "/v1/tasks", {"prompt": "populations", "plan": PLAN, "budget_usd": 0.5})
    assert first["status"] == "completed"
    assert len(sim.calls("worker")) == 4
    sim.requests.clear()

    edited = {**PLAN, "subtasks": [*PLAN["subtasks"][:2],
                                   {**PLAN["subtasks"][2], "description": "Check the Oslo figure against the census"},
                                   PLAN["subtasks"][3]]}
    second = await _run(api, api.alice, f"/v1/tasks/{first['id']}/rerun", {"plan": edited})
    assert second["status"] == "completed" and second["rerun_of"] == first["id"]
    assert second["budget_usd"] == 0.5 and second["prompt"] == "populations"
    # only the edited subtask and the one downstream of it were called
    assert _worker_subtasks(sim) == ["Check the Oslo figure against the census", "Summarise both populations"]
    subs = second["subtasks"]
    assert [s["reused_from"] for s in subs] == [first["id"], first["id"], None, None]
    assert [s["result"] for s in subs[:2]] == [s["result"] for s in first["subtasks"][:2]]
    assert subs[0]["cost_usd"] == 0 and subs[1]["cost_usd"] == 0 and subs[2]["cost_usd"] > 0
    assert second["total_cost_usd"] == pytest.approx(
        sum(s["cost_usd"] for s in subs) + second["synthesis"]["cost_usd"], abs=1e-9)


async def test_a_rerun_with_other_models_for_a_tier_runs_that_tier_again(api: Api, sim: Simulator) -> None:
    first = await _run(api, api.alice, "/v1/tasks", {"prompt": "populations", "plan": PLAN})
    sim.requests.clear()
    second = await _run(api, api.alice, f"/v1/tasks/{first['id']}/rerun", {"models": {"2": ["openai/gpt-4.1"]}})
    # only the tier-2 subtask runs again (on the chosen model), and the synthesis (tier 2) too
    assert [(c["model"], c["text"].count("Summarise both populations")) for c in sim.calls("worker")] == [
        ("gpt-4.1", 1)]
    assert [c["model"] for c in sim.calls("synthesizer")] == ["gpt-4.1"]
    assert [s["model"] for s in second["subtasks"]][3] == "openai/gpt-4.1"
    assert [s["reused_from"] for s in second["subtasks"]] == [first["id"]] * 3 + [None]
    # a re-run of that keeps its models: nothing changed, nothing is called but the synthesis
    sim.requests.clear()
    third = await _run(api, api.alice, f"/v1/tasks/{second['id']}/rerun", {})
    assert sim.calls("worker") == [] and [c["model"] for c in sim.calls("synthesizer")] == ["gpt-4.1"]
    assert third["status"] == "completed"


async def test_a_rerun_without_changes_calls_no_subtask(api: Api, sim: Simulator) -> None:
    first = await _run(api, api.alice, "/v1/tasks", {"prompt": "populations", "plan": PLAN})
    sim.requests.clear()
    second = await _run(api, api.alice, f"/v1/tasks/{first['id']}/rerun", {"budget_usd": 0.25})
    assert sim.calls("worker") == [] and len(sim.calls("synthesizer")) == 1
    assert second["budget_usd"] == 0.25 and second["status"] == "completed"
    assert all(s["reused_from"] == first["id"] for s in second["subtasks"])


async def test_a_rerun_runs_again_what_failed_and_what_was_skipped(api: Api, sim: Simulator) -> None:
    sim.fail(Failure(400, kind="worker"))  # permanent: the subtask fails, its dependent is skipped
    plan = {"subtasks": [{"description": "Step one", "depends_on": []},
                         {"description": "Step two", "depends_on": [0]}]}
    first = await _run(api, api.alice, "/v1/tasks", {"prompt": "two steps", "plan": plan})
    assert [s["status"] for s in first["subtasks"]] == ["failed", "skipped"]
    sim.requests.clear()
    second = await _run(api, api.alice, f"/v1/tasks/{first['id']}/rerun", {})
    assert _worker_subtasks(sim) == ["Step one", "Step two"] and second["status"] == "completed"


async def test_rerun_edges(api: Api) -> None:
    first = await _run(api, api.alice, "/v1/tasks", {"prompt": "populations", "plan": PLAN})
    path = f"/v1/tasks/{first['id']}/rerun"
    # another user's task is not found, as every other door says
    r = await api.http.post(path, json={}, headers=api.auth(api.bob))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.http.post("/v1/tasks/t_nope/rerun", json={}, headers=api.auth(api.alice))
    assert r.status_code == 404
    r = await api.http.post(path, json={}, headers=api.auth(api.reader))
    assert r.status_code == 403
    for body, said in [({"budget_usd": -1}, "budget_usd"), ({"models": ["x"]}, "models"),
                       ({"models": {"4": ["openai/gpt-4.1"]}}, "not a tier"),
                       ({"models": {"2": []}}, "at least one model"),
                       ({"models": {"2": ["openai/gpt-5"]}}, "not a model this server is configured with"),
                       ({"plan": {"subtasks": [{"description": "a", "depends_on": [3]}]}}, "depends on 3")]:
        r = await api.http.post(path, json=body, headers=api.auth(api.alice))
        assert r.status_code == 422, r.text
        assert said in r.json()["error"]["message"]
    # the admin may re-run anyone's task; the new task is the admin's
    r = await api.http.post(path, json={}, headers=api.auth(api.admin))
    assert r.status_code == 202
    assert (await api.http.get(f"/v1/tasks/{r.json()['id']}", headers=api.auth(api.alice))).status_code == 404
    spec = (await api.http.get("/openapi.json")).json()
    assert "/v1/tasks/{task_id}/rerun" in spec["paths"]


def test_cli_tasks_rerun_with_an_edited_plan_file(sim: Simulator, sim_settings: Settings, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from compound.api.app import create_app
    from compound.cli import _register, app
    from compound.store.users import create_token
    from tests.fixtures.served import serving_in_thread

    _register()
    runner = CliRunner()
    api = create_app(sim_settings.model_copy(update={"rate_limit_per_minute": 1000}))
    with serving_in_thread(api) as url:
        monkeypatch.setenv("COMPOUND_URL", url)
        monkeypatch.setenv("COMPOUND_TOKEN", create_token(api.state.store.engine, "dana")[1])
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(PLAN))
        first = runner.invoke(app, ["tasks", "submit", "populations", "--plan", str(path), "--watch"])
        assert first.exit_code == 0, first.output
        first_id = first.output.split("submitted ")[1].split()[0]
        sim.requests.clear()
        edited = json.loads(json.dumps(PLAN))
        edited["subtasks"][3]["description"] = "Summarise both populations in one line"
        path.write_text(json.dumps(edited))
        out = runner.invoke(app, ["tasks", "rerun", first_id, "--plan", str(path), "--budget", "0.3", "--watch"])
        assert out.exit_code == 0, out.output
        assert f"a re-run of {first_id}" in out.stderr
        assert f"reused from {first_id}" in out.stdout  # the tree says where a result came from
        assert _worker_subtasks(sim) == ["Summarise both populations in one line"]
        sim.requests.clear()
        other = runner.invoke(app, ["tasks", "rerun", first_id, "--models", "2=openai/gpt-4.1", "--watch"])
        assert other.exit_code == 0, other.output
        assert [c["model"] for c in sim.calls("synthesizer")] == ["gpt-4.1"]  # the tier-2 synthesis
        assert {c["model"] for c in sim.calls("worker")} == {"gpt-4.1"}  # only tier 2 runs again
        for given in ("2", "2=", "=openai/gpt-4.1"):
            malformed = runner.invoke(app, ["tasks", "rerun", first_id, "--models", given])
            assert malformed.exit_code == 2 and "TIER=MODEL" in malformed.stderr, malformed.output
        unknown = runner.invoke(app, ["tasks", "rerun", first_id, "--models", "2=openai/gpt-5"])
        assert unknown.exit_code == 1 and "not a model this server is configured with" in unknown.output
        bad = runner.invoke(app, ["tasks", "rerun", first_id, "--budget", "0"])
        assert bad.exit_code == 2 and "--budget" in bad.stderr
        missing = runner.invoke(app, ["tasks", "rerun", "t_0000000000000000"])
        assert missing.exit_code == 1 and "404" in missing.output


# cascades -------------------------------------------------------------------------------





@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def cascade_api(request: pytest.FixtureRequest, sim_settings: Settings) -> AsyncIterator[Api]:
    """The app with tier 1's cascade on (tier 1: haiku, then gpt-4.1-mini), on SQLite
    and on PostgreSQL where a server answers (the store's migrations run at start)."""
    url = sim_settings.database_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    async with serving(sim_settings.model_copy(update={"tier1_cascade": True, "database_url": url})) as api:
        yield api


ONE_STEP = {"subtasks": [{"description": "Name the tallest mountain in Africa", "tier_hint": 1}]}


async def _ledger(api: Api, task_id: str) -> list[tuple[str, str, str]]:
    rows = await api.app.state.store.ledger_rows(task_id)
    return [(r["kind"], r["model"], r["status"]) for r in rows]


async def test_a_cascade_whose_check_passes_calls_no_other_model(cascade_api: Api, sim: Simulator) -> None:
    sim.answer("worker", "Kilimanjaro")
    snap = await _run(cascade_api, cascade_api.alice, "/v1/tasks", {"prompt": "tallest", "plan": ONE_STEP})
    assert snap["status"] == "completed" and snap["result"] == "Kilimanjaro"
    assert [c["model"] for c in sim.calls("worker")] == ["claude-haiku-4-5"]
    check = sim.calls("checker")
    assert [c["model"] for c in check] == ["claude-haiku-4-5"]
    assert "<answer>\nKilimanjaro\n</answer>" in check[0]["text"]
    assert check[0]["body"]["max_tokens"] == 16
    ledger = await _ledger(cascade_api, snap["id"])
    assert ledger == [("subtask", "anthropic/claude-haiku-4-5", "ok"), ("check", "anthropic/claude-haiku-4-5", "ok")]
    sub = snap["subtasks"][0]
    assert sub["model"] == "anthropic/claude-haiku-4-5" and sub["attempts"] == 2
    # the check's cost is the subtask's: the parts still add up to the task's total
    assert sub["cost_usd"] == pytest.approx(snap["total_cost_usd"], abs=1e-9) and sub["cost_usd"] > 0


async def test_a_cascade_whose_check_fails_calls_the_next_model(cascade_api: Api, sim: Simulator) -> None:
    sim.answer("worker", "Mont Blanc")
    sim.answer("checker", "NO")
    snap = await _run(cascade_api, cascade_api.alice, "/v1/tasks", {"prompt": "tallest", "plan": ONE_STEP})
    assert snap["status"] == "completed"
    assert [c["model"] for c in sim.calls("worker")] == ["claude-haiku-4-5", "gpt-4.1-mini"]
    assert snap["result"] != "Mont Blanc" and snap["result"].startswith("Result of subtask")
    assert await _ledger(cascade_api, snap["id"]) == [
        ("subtask", "anthropic/claude-haiku-4-5", "ok"), ("check", "anthropic/claude-haiku-4-5", "ok"),
        ("subtask", "openai/gpt-4.1-mini", "ok")]
    sub = snap["subtasks"][0]
    assert sub["model"] == "openai/gpt-4.1-mini" and sub["attempts"] == 3


@pytest.mark.parametrize("failures", [
    [Failure(400, kind="checker")],  # the check could not be made: not taken on trust
    [Failure(529, kind="worker", model="claude-haiku-4-5")] * 5,  # the first model's attempts all failed
])
async def test_a_cascade_goes_on_when_the_cheap_model_or_its_check_fails(cascade_api: Api, sim: Simulator,
                                                                         failures: list[Failure]) -> None:
    sim.fail(*failures)
    snap = await _run(cascade_api, cascade_api.alice, "/v1/tasks", {"prompt": "tallest", "plan": ONE_STEP})
    assert snap["status"] == "completed" and snap["subtasks"][0]["model"] == "openai/gpt-4.1-mini"
    assert sim.calls("worker")[-1]["model"] == "gpt-4.1-mini"


async def test_a_permanent_error_of_the_cheap_model_fails_the_subtask_as_without_a_cascade(
        cascade_api: Api, sim: Simulator) -> None:
    sim.fail(Failure(400, kind="worker", model="claude-haiku-4-5"))
    snap = await _run(cascade_api, cascade_api.alice, "/v1/tasks", {"prompt": "tallest", "plan": ONE_STEP})
    assert snap["status"] == "failed" and snap["subtasks"][0]["status"] == "failed"
    assert [c["model"] for c in sim.calls("worker")] == ["claude-haiku-4-5"] and sim.calls("checker") == []


async def test_a_cascade_passes_its_answer_to_dependents_and_leaves_other_tiers_alone(cascade_api: Api,
                                                                                      sim: Simulator) -> None:
    sim.answer("worker", "Kilimanjaro")
    plan = {"subtasks": [{"description": "Name the tallest mountain in Africa", "tier_hint": 1},
                         {"description": "Give its height", "tier_hint": 2, "depends_on": [0]}]}
    snap = await _run(cascade_api, cascade_api.alice, "/v1/tasks", {"prompt": "tallest", "plan": plan})
    assert snap["status"] == "completed"
    assert len(sim.calls("checker")) == 1  # tier 2 has no cascade
    height = sim.calls("worker")[-1]
    assert height["model"] == "claude-sonnet-4-5" and "Kilimanjaro" in height["text"]


@pytest.mark.parametrize(("said", "stands"), [
    ("YES", True), ("yes.", True), ("Yes, it does.", True), ("**YES**", True), ("PASS", True),
    ("NO", False), ("no", False), ("", False), ("I think yes", False), ("Maybe", False),
])
def test_what_a_check_answer_means(said: str, stands: bool) -> None:
    from compound.executor.taskrun import passes

    assert passes(said) is stands


async def test_no_check_without_the_cascade(api: Api, sim: Simulator) -> None:
    snap = await _run(api, api.alice, "/v1/tasks", {"prompt": "tallest", "plan": ONE_STEP})
    assert snap["status"] == "completed" and sim.calls("checker") == []


async def test_optional_dependencies_and_reruns_on_each_store(cascade_api: Api, sim: Simulator) -> None:
    """The new columns on both stores: an optional dependency that failed, then a re-run
    that reuses what completed and runs the rest (tier 2: no cascade involved)."""
    sim.fail(Failure(400, kind="worker"))
    plan = {"subtasks": [{"description": "Look up the price list", "tier_hint": 2},
                         {"description": "Estimate the cost", "tier_hint": 2,
                          "depends_on": [{"index": 0, "required": False}]}]}
    first = await _run(cascade_api, cascade_api.alice, "/v1/tasks", {"prompt": "cost", "plan": plan})
    assert [s["status"] for s in first["subtasks"]] == ["failed", "completed"]
    assert first["subtasks"][1]["optional_depends_on"] == [0]
    sim.requests.clear()
    second = await _run(cascade_api, cascade_api.alice, f"/v1/tasks/{first['id']}/rerun", {})
    # the failed one runs again, so its dependent's input changed: it runs again too
    assert _worker_subtasks(sim) == ["Look up the price list", "Estimate the cost"]
    assert second["status"] == "completed" and second["rerun_of"] == first["id"]
    assert second["subtasks"][1]["optional_depends_on"] == [0]
    sim.requests.clear()
    third = await _run(cascade_api, cascade_api.alice, f"/v1/tasks/{second['id']}/rerun", {})
    assert sim.calls("worker") == []
    assert [s["reused_from"] for s in third["subtasks"]] == [second["id"]] * 2


def test_a_subtask_whose_tools_changed_is_not_reused() -> None:
    from compound.executor.reuse import content_keys
    from compound.store.values import SubState

    def sub(**kw: Any) -> SubState:
        return SubState(index=0, description="look it up", tier_hint=1, tier_assigned=1, models=["m"],
                        depends_on=[], status="pending", model="m", **kw)

    keys = [content_keys([s])[0] for s in (sub(), sub(tools=["facts.lookup"]), sub(tools=["facts.other"]),
                                           sub(kind="tool", tool="facts.bump", arguments={"n": 1}),
                                           sub(kind="tool", tool="facts.bump", arguments={"n": 2}))]
    assert len(set(keys)) == 5
    assert content_keys([sub(tools=["facts.lookup"])]) == content_keys([sub(tools=["facts.lookup"])])
