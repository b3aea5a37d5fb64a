"""Plugins by entry point (compound/plugins.py, executor/plugins.py): the example package
(examples/compound-example-plugin, installed with the dev group) registers the step kind
`word_count` and the hook `banned_words`. Through the public API with the simulator: the
step runs in a plan and feeds a dependent model subtask, under the budget and in the
ledger; the pre hook vetoes; the post hook sees every outcome; the planner sees the step
as a card; an entry point not named is never imported; a broken name stops the start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from compound.core.errors import ConfigError
from compound.core.settings import Settings
from compound.planner.validate import argument_errors
from compound.plugins import Outcome, StepContext, StepError, StepResult, SubtaskView, Veto, load_plugins
from compound.simulator import Simulator
from compound.store.base import RunStore
from tests.fixtures.api import Api
from tests.test_process import running

PLUGINS = ["word_count", "banned_words"]
TEXT = "one two three four"  # 4 words, 18 characters
WORD_PRICE = 1e-6  # the example's pretend price a word


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The post hook's record (JSON lines) and the banned word, as the example reads them."""
    path = tmp_path / "outcomes.jsonl"
    monkeypatch.setenv("EXAMPLE_PLUGIN_RECORD", str(path))
    monkeypatch.setenv("EXAMPLE_PLUGIN_BANNED_WORDS", "forbidden")
    return path


@pytest.fixture
def sim_settings(sim_settings: Settings) -> Settings:  # the shared fixture, with the plugins named
    return sim_settings.model_copy(update={"plugins": PLUGINS})


def outcomes(path: Path, task_id: str) -> dict[int, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {r["index"]: r for r in rows if r["task_id"] == task_id}


async def submit(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.http.post("/v1/tasks", json=body, headers=api.auth(api.alice))
    assert r.status_code == 202, r.text
    return await api.wait(r.json()["id"], api.alice)


COUNT_THEN_DESCRIBE = {"subtasks": [
    {"description": "Count the words of the motto", "kind": "word_count", "arguments": {"text": TEXT}},
    {"description": "Describe how long the motto is", "depends_on": [0]}]}


async def test_a_step_kind_runs_in_a_plan_and_feeds_a_dependent_model_subtask(
        api: Api, sim: Simulator, record: Path) -> None:
    snap = await submit(api, {"prompt": "How long is the motto?", "plan": COUNT_THEN_DESCRIBE, "budget_usd": 1.0})
    assert snap["status"] == "completed", snap
    step, described = snap["subtasks"]
    assert (step["kind"], step["status"], step["result"]) == ("word_count", "completed", "4 words")
    assert described["status"] == "completed"
    workers = sim.calls("worker")
    assert len(workers) == 1 and "4 words" in workers[0]["text"]  # the step's result is the model's input
    # reserved at its worst case (a word a character), settled at what it reported
    rows = [r for r in await api.app.state.store.ledger_rows(snap["id"]) if r["subtask_index"] == 0]
    assert len(rows) == 1
    (row,) = rows
    assert (row["kind"], row["model"], row["status"]) == ("subtask", "step:word_count", "ok")
    assert row["reserved_usd"] == pytest.approx(WORD_PRICE * len(TEXT))
    assert row["cost_usd"] == pytest.approx(WORD_PRICE * 4)
    assert step["cost_usd"] == pytest.approx(WORD_PRICE * 4)
    assert snap["total_cost_usd"] >= WORD_PRICE * 4
    # the post hook saw both outcomes, as they ended
    seen = outcomes(record, snap["id"])
    assert seen[0] == {"task_id": snap["id"], "index": 0, "kind": "word_count", "status": "completed",
                       "result": "4 words", "error": None}
    assert seen[1]["status"] == "completed" and seen[1]["result"] == described["result"]


async def test_a_rerun_reuses_an_unchanged_step_at_no_cost(api: Api, record: Path) -> None:
    first = await submit(api, {"prompt": "How long is the motto?", "plan": COUNT_THEN_DESCRIBE, "budget_usd": 1.0})
    r = await api.http.post(f"/v1/tasks/{first['id']}/rerun", json={}, headers=api.auth(api.alice))
    assert r.status_code == 202, r.text
    again = await api.wait(r.json()["id"], api.alice)
    step = again["subtasks"][0]
    assert (step["kind"], step["result"], step["reused_from"]) == ("word_count", "4 words", first["id"])
    assert [r for r in await api.app.state.store.ledger_rows(again["id"]) if r["model"] == "step:word_count"] == []


async def test_a_step_that_does_not_fit_the_budget_is_skipped_before_it_runs(api: Api, record: Path) -> None:
    long_text = "word " * 2000  # reserved at $0.01
    plan = {"subtasks": [{"description": "Count the words", "kind": "word_count", "arguments": {"text": long_text}}]}
    snap = await submit(api, {"prompt": "count", "plan": plan, "budget_usd": 0.001})
    (step,) = snap["subtasks"]
    assert step["status"] == "skipped" and "budget exhausted" in step["error"]
    assert "step word_count may cost up to $0.010000" in step["error"]
    assert [r for r in await api.app.state.store.ledger_rows(snap["id"]) if r["subtask_index"] == 0] == []
    assert outcomes(record, snap["id"])[0]["status"] == "skipped"


async def test_the_pre_hook_vetoes_a_subtask_and_its_dependents_are_skipped(
        api: Api, sim: Simulator, record: Path) -> None:
    plan = {"subtasks": [
        {"description": "Write about the forbidden topic"},
        {"description": "Summarise that text", "depends_on": [0]},
        {"description": "Name a tea"}]}
    snap = await submit(api, {"prompt": "Write", "plan": plan, "budget_usd": 1.0})
    vetoed, dependent, other = snap["subtasks"]
    assert vetoed["status"] == "skipped"
    assert vetoed["error"] == "skipped: vetoed by hook banned_words: its description names the banned word " \
                              "'forbidden'"
    assert dependent["status"] == "skipped" and "was vetoed by a hook" in dependent["error"]
    assert other["status"] == "completed"
    assert snap["status"] == "partial"
    assert not any("forbidden" in c["text"] for c in sim.calls("worker"))  # no model call was made for it
    assert [r for r in await api.app.state.store.ledger_rows(snap["id"]) if r["subtask_index"] == 0] == []
    seen = outcomes(record, snap["id"])
    assert seen[0]["status"] == "skipped" and "banned word" in seen[0]["error"]
    assert 1 not in seen  # skipped by the scheduler: it never came to run
    assert seen[2]["status"] == "completed"


async def test_a_plan_naming_an_unknown_kind_or_bad_arguments_is_refused_with_every_error(api: Api) -> None:
    plan = {"subtasks": [
        {"description": "a", "kind": "word_cout"},
        {"description": "b", "kind": "word_count", "arguments": {"text": 3, "colour": "red"}}]}
    r = await api.http.post("/v1/tasks", json={"prompt": "x", "plan": plan}, headers=api.auth(api.alice))
    assert r.status_code == 422, r.text
    text = r.json()["error"]["message"]
    assert "subtask 0 has kind 'word_cout'" in text and '"word_count"' in text
    assert "argument 'text' must be of type string, not a number (3)" in text
    assert "argument 'colour' is not one it takes (it takes text, label)" in text


async def test_the_planner_sees_the_step_kinds_as_cards(api: Api, sim: Simulator) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "Count the words of a poem", "budget_usd": 1.0},
                            headers=api.auth(api.alice))
    assert r.status_code == 202
    await api.wait(r.json()["id"], api.alice)
    system = sim.calls("planner")[0]["system"]
    assert "<steps>\n- word_count(text, label): Count the words of a text" in system


async def test_without_plugins_named_the_prompt_and_the_kinds_are_as_before(
        sim_settings: Settings, store: RunStore) -> None:
    from compound.executor.workflow import Workflow
    from compound.prompts import render

    plain = Workflow(settings=sim_settings.model_copy(update={"plugins": []}), store=store,
                     calls=None, versions={})  # type: ignore[arg-type]
    assert plain.plugins.plugins.steps == {} and plain.plugins.plugins.hooks == ()
    assert render("decompose", request="r", max_subtasks=3, steps=[]) == render("decompose", request="r",
                                                                                 max_subtasks=3)


async def test_the_child_process_loads_the_same_plugins(
        store: RunStore, sim_settings: Settings, record: Path) -> None:
    async with running(store, sim_settings) as executor:
        task = await store.create_task(prompt="How long is the motto?", budget_usd=1.0,
                                       plan_in=COUNT_THEN_DESCRIBE)
        await executor.dispatch(task.id, priority=2)
        assert await executor.wait(task.id, timeout=60) == "completed"
    done = await store.load(task.id)
    assert done is not None
    assert [(s.kind, s.status) for s in done.subtasks] == [("word_count", "completed"), ("llm", "completed")]
    assert done.subtasks[0].result == "4 words"
    assert outcomes(record, task.id)[0]["result"] == "4 words"  # the child's hook wrote it


async def test_a_plan_the_planner_writes_may_use_a_step_kind(api: Api, sim: Simulator, record: Path) -> None:
    sim.answer("planner", json.dumps({"reasoning": "count, then describe", **COUNT_THEN_DESCRIBE}))
    snap = await submit(api, {"prompt": "How long is the motto?", "budget_usd": 1.0})
    assert snap["status"] == "completed", snap
    step, described = snap["subtasks"]
    assert (step["kind"], step["result"], described["status"]) == ("word_count", "4 words", "completed")
    assert not snap["warnings"]  # valid as written: not repaired, not the fallback


# a step's and a hook's failures, with fakes in the plugins' place ---------------------------


class Boom:
    name = "boom"
    description = "Fails, or reports what it was told."

    def __init__(self) -> None:
        self.arguments_schema: dict[str, Any] = {"type": "object", "properties": {"how": {"type": "string"}}}

    def worst_case_usd(self, arguments: dict[str, Any]) -> float:
        return 0.01

    async def run(self, ctx: StepContext) -> str | StepResult:
        how = ctx.arguments.get("how")
        if how == "raise":
            raise ValueError("no luck")
        if how == "step_error":
            raise StepError("the service said no", cost_usd=0.002)
        return StepResult(text="dear", cost_usd=5.0)  # more than its worst case


class Broken:
    name = "broken"

    async def before(self, subtask: SubtaskView) -> Veto | None:
        if "guarded" in subtask.description:
            raise RuntimeError("cannot decide")
        return None

    async def after(self, subtask: SubtaskView, outcome: Outcome) -> None:
        raise RuntimeError("a post hook's failure changes nothing")


async def test_a_step_that_raises_fails_and_is_booked_and_a_dear_one_is_held_to_its_worst_case(
        sim_settings: Settings, store: RunStore, sim_client: Any) -> None:
    from compound.executor.plugins import PluginSteps
    from compound.executor.service import Executor
    from compound.plugins import Plugins

    ex = Executor(settings=sim_settings, store=store, client=sim_client)
    ex.workflow.plugins = PluginSteps(plugins=Plugins(steps={"boom": Boom()}, hooks=(Broken(),)), store=store,
                                      calls=ex.calls)
    plan = {"subtasks": [{"description": "a", "kind": "boom", "arguments": {"how": "raise"}},
                         {"description": "b", "kind": "boom", "arguments": {"how": "step_error"}},
                         {"description": "c", "kind": "boom"},
                         {"description": "a guarded one"}]}
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan)
    await ex.run_task(task.id)
    subs = (await store.load(task.id)).subtasks  # type: ignore[union-attr]
    assert (subs[0].status, subs[0].error) == ("failed", "step boom: ValueError: no luck")
    assert (subs[1].status, subs[1].error) == ("failed", "step boom: the service said no")
    assert (subs[2].status, subs[2].result) == ("completed", "dear")
    assert subs[3].status == "skipped"
    assert subs[3].error == "skipped: vetoed by hook broken: the hook failed (RuntimeError: cannot decide)"
    rows = {r["subtask_index"]: r for r in await store.ledger_rows(task.id) if r["model"] == "step:boom"}
    assert (rows[0]["status"], rows[0]["cost_usd"]) == ("error", pytest.approx(0.01))  # unknown: its worst case
    assert (rows[1]["status"], rows[1]["cost_usd"]) == ("error", pytest.approx(0.002))  # as the StepError said
    assert (rows[2]["status"], rows[2]["cost_usd"]) == ("ok", pytest.approx(0.01))  # 5.0 reported, held to 0.01
    done = await store.load(task.id)
    assert done is not None and done.total_cost_usd <= done.budget_usd
    await sim_client.aclose()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_a_queue_worker_runs_the_step_and_the_hooks(tmp_path: Path) -> None:
    from tests.fixtures.cluster import Cluster
    from tests.fixtures.db import postgres_available

    if not postgres_available():
        pytest.skip("SKIPPED: no PostgreSQL server answers on 127.0.0.1:5432")
    path = tmp_path / "worker-outcomes.jsonl"
    c = Cluster(tmp_path, env={"COMPOUND_PLUGINS": ",".join(PLUGINS), "EXAMPLE_PLUGIN_RECORD": str(path),
                               "EXAMPLE_PLUGIN_BANNED_WORDS": "forbidden"})
    try:
        c.start()
        c.start_workers(1)
        port = c.start_api()
        c.wait_workers_ready(1)
        plan = {"subtasks": [*COUNT_THEN_DESCRIBE["subtasks"], {"description": "the forbidden one"}]}
        task = c.submit(port, {"prompt": "How long is the motto?", "plan": plan, "budget_usd": 1.0})
        snap = c.wait_terminal(port, [task["id"]])[task["id"]]
    finally:
        c.stop()
    step, described, vetoed = snap["subtasks"]
    assert (step["status"], step["result"], described["status"]) == ("completed", "4 words", "completed")
    assert vetoed["status"] == "skipped" and "vetoed by hook banned_words" in vetoed["error"]
    seen = outcomes(path, task["id"])  # written by the worker's hook
    assert (seen[0]["result"], seen[2]["status"]) == ("4 words", "skipped")


def test_every_host_s_executor_loads_the_plugins_from_its_settings(sim_settings: Settings) -> None:
    """The Executor is what the server's loop, the executor's child process
    (executor/child.py) and a queue worker (worker/runner.py) each make from settings."""
    from compound.executor.service import Executor

    ex = Executor(settings=sim_settings, store=None, client=None)  # type: ignore[arg-type]
    assert set(ex.workflow.plugins.plugins.steps) == {"word_count"}
    assert [h.name for h in ex.workflow.plugins.plugins.hooks] == ["banned_words"]


def test_an_entry_point_not_named_is_never_imported() -> None:
    # the package's never_loaded entry point raises when imported: loading the others must not touch it
    plugins = load_plugins(["word_count", "banned_words"])
    assert set(plugins.steps) == {"word_count"} and [h.name for h in plugins.hooks] == ["banned_words"]
    assert "compound_example_plugin.unloadable" not in sys.modules
    assert load_plugins([]).steps == {}
    with pytest.raises(ConfigError) as exc:  # named, it is imported (and its import fails)
        load_plugins(["never_loaded"])
    assert "plugin 'never_loaded' (COMPOUND_PLUGINS) failed to load" in exc.value.message
    assert "RuntimeError" in exc.value.message


def test_a_name_nothing_installs_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as exc:
        load_plugins(["word_count", "wordcount"])
    assert exc.value.message.startswith("plugin 'wordcount' (COMPOUND_PLUGINS) is not installed")
    assert "banned_words" in exc.value.message and "word_count" in exc.value.message


def test_the_setting_reads_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_PLUGINS", " word_count, banned_words,,word_count ")
    assert Settings().plugins == ["word_count", "banned_words"]
    monkeypatch.setenv("COMPOUND_PLUGINS", "")
    assert Settings().plugins == []


@pytest.mark.slow
@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
@pytest.mark.parametrize(("name", "says"), [
    ("wordcount", "error: plugin 'wordcount' (COMPOUND_PLUGINS) is not installed"),
    ("never_loaded", "error: plugin 'never_loaded' (COMPOUND_PLUGINS) failed to load"),
])
def test_a_broken_plugin_name_stops_the_start_with_a_message(
        command: list[str], name: str, says: str, sqlite_url: str) -> None:
    env = {**os.environ, "COMPOUND_DATABASE_URL": sqlite_url, "COMPOUND_PLUGINS": f"word_count,{name}"}
    out = subprocess.run([sys.executable, "-m", "compound.cli.__main__", *command], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr
    assert "Traceback" not in out.stderr


def test_a_streamed_entry_that_acts_waits_for_the_whole_plan() -> None:
    from compound.planner.stream import PlanStream

    stream = PlanStream(5)
    text = json.dumps({"subtasks": [{"description": "plain"}, {"description": "count", "kind": "word_count"},
                                    {"description": "after it"}], "reasoning": "r"})
    handed = stream.feed(text)
    assert [(i, e.description) for i, e in handed] == [(0, "plain")]  # the rest wait for validation
    assert stream.stopped is not None and "subtask 1 acts" in stream.stopped


def test_a_constrained_plan_schema_offers_the_step_kinds() -> None:
    from compound.planner.decompose import plan_schema

    items = plan_schema(3, [], ["word_count"])["properties"]["subtasks"]["items"]["properties"]
    assert items["kind"] == {"type": "string", "enum": ["llm", "word_count"]}
    assert items["arguments"] == {"type": "object"} and "tool" not in items
    with_tools = plan_schema(3, ["fx.echo"], ["word_count"])["properties"]["subtasks"]["items"]["properties"]
    assert with_tools["kind"]["enum"] == ["llm", "tool", "word_count"] and "tool" in with_tools
    assert "kind" not in plan_schema(3)["properties"]["subtasks"]["items"]["properties"]


# the argument check, as a table ---------------------------------------------------------------

SCHEMA = {"type": "object", "required": ["n"], "additionalProperties": False,
          "properties": {"n": {"type": "integer"}, "mode": {"enum": ["a", "b"]}, "x": {"type": ["number", "null"]}}}


@pytest.mark.parametrize(("arguments", "errors"), [
    ({"n": 1}, []),
    ({"n": 2.0, "mode": "b", "x": None}, []),
    ({}, ["argument 'n' is required"]),
    ({"n": True}, ["argument 'n' must be of type integer, not a boolean"]),
    ({"n": 1.5}, ["argument 'n' must be of type integer, not a number (1.5)"]),
    ({"n": 1, "mode": "c"}, ["argument 'mode' must be one of ['a', 'b'], not 'c'"]),
    ({"n": 1, "x": "1"}, ["argument 'x' must be of type number or null, not a string ('1')"]),
    ({"n": 1, "y": 0}, ["argument 'y' is not one it takes (it takes n, mode, x)"]),
])
def test_argument_errors(arguments: dict[str, Any], errors: list[str]) -> None:
    assert argument_errors(SCHEMA, arguments) == errors
