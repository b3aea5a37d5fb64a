"""The eval runner through the whole pipeline: expected properties, gold-graph scores,
cost against the strongest tier and the pairwise judge with a fake at the LLM seam;
then `compound eval` replaying the shipped recording, and recording against the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from compound.cli import _register, app
from compound.core.settings import Settings
from compound.evals.datasets import Expect, load
from compound.evals.runner import EvalRun, check_expect, combine, parse_verdict, summarize
from compound.evals.similarity import LexicalMatcher
from compound.llm.base import Message, Price, Usage
from compound.prompts import escape
from compound.simulator import Simulator, answer_for, prompt_kind
from tests.fixtures.fakes import FakeLLM

_register()
runner = CliRunner()
ROOT = Path(__file__).parent.parent
FIX = Path(__file__).parent / "fixtures" / "evals"
OWN = ROOT / "evals" / "datasets" / "own.jsonl"
RECORDING = ROOT / "evals" / "recordings" / "own-sim-9.jsonl"

FAKE_PRICE = Price(input=1e-6, output=5e-6)  # what FakeLLM charges every call
STRONG = Price(input=5e-6, output=25e-6)  # five times that: the strongest tier


def price_of(model: str) -> Price:
    return STRONG if model == "anthropic/claude-opus-4-5" else FAKE_PRICE


def settings() -> Settings:
    return Settings(retry_initial_wait_s=0.0, retry_max_wait_s=0.0)


# pure parts ----------------------------------------------------------------------------

DEPS = [[], [0], [0], [1, 2]]  # a diamond: draft -> (review, translate) -> publish
DESCS = ["Draft the post", "Review the draft for errors", "Translate the draft", "Publish both versions"]


@pytest.mark.parametrize(("expect", "want"), [
    (Expect(subtasks=(3, 5), min_width=2), {"subtasks": True, "width": True}),
    (Expect(subtasks=(1, 3), min_width=3), {"subtasks": False, "width": False}),
    (Expect(orderings=[("draft", "publish"), ("review", "translate"), ("nothing", "publish")]),
     {"subtasks": True, "width": True, "order draft < publish": True, "order review < translate": False,
      "order nothing < publish": False}),
    (Expect(orderings=[("DRAFT THE|write", "translat|localis")]),  # alternatives, any case
     {"subtasks": True, "width": True, "order DRAFT THE|write < translat|localis": True}),
    (Expect(tiers={"review": 2, "publish": 1, "missing": 1}),
     {"subtasks": True, "width": True, "tier review = 2": True, "tier publish = 1": False, "tier missing = 1": False}),
])
def test_expected_properties_table(expect: Expect, want: dict[str, bool]) -> None:
    assert check_expect(expect, DESCS, DEPS, [1, 2, 1, 3]) == want


@pytest.mark.parametrize(("text", "want"), [
    ("A", "A"), ("b.", "B"), ("**A** is better", "A"), ("Tie", "tie"), ("tie - both fine", "tie"),
    ("Answer A", "?"), ("", "?"), ("echo: a request", "?"),
])
def test_verdict_table(text: str, want: str) -> None:
    assert parse_verdict(text) == want


@pytest.mark.parametrize(("first", "second", "want"), [
    ("A", "B", "win"),  # compound preferred in both positions
    ("B", "A", "loss"),
    ("A", "A", "tie"),  # the judge preferred a position, not an answer
    ("tie", "B", "tie"),
    ("A", "?", "error"),
])
def test_two_orders_combine(first: str, second: str, want: str) -> None:
    assert combine(first, second)[0] == want


# the runner with a fake ---------------------------------------------------------------

def planner_for(plans: dict[str, dict[str, Any]]) -> Callable[[str, list[Message]], str]:
    """Planner answers by request; workers and the synthesizer as the simulator does; the
    judge prefers compound (answer A first, B second); a direct call answers briefly."""
    def answer(model: str, messages: list[Message]) -> str:
        system = messages[0]["content"]
        if system.startswith("You are an impartial judge"):
            return "B" if "<answer_a>\na direct answer" in messages[-1]["content"] else "A"
        if messages[0]["role"] == "user":
            return "a direct answer"
        kind = prompt_kind(system)
        if kind == "planner":
            for needle, plan in plans.items():
                if needle in messages[-1]["content"]:
                    return json.dumps(plan)
        return answer_for(kind, messages[-1]["content"], 6)
    return answer


def steps(*descs: str, deps: list[list[int]] | None = None) -> dict[str, Any]:
    deps = deps or [[] for _ in descs]
    return {"subtasks": [{"description": d, "tier_hint": 1, "depends_on": dp} for d, dp in zip(descs, deps, strict=True)]}


async def test_gold_graph_scores_through_the_pipeline() -> None:
    items = load(FIX / "worfbench_graph_eval.json", "worfbench")
    plans = {
        "Jade Roller": steps("Rub the jade piece with a dry cloth."),  # one of two gold steps
        "weather in Paris": steps("Get the weather in Paris with weather_api.", "Get the weather in Rome with weather_api.",
                                  "Compare the two forecasts.", deps=[[], [], [0, 1]]),  # the gold exactly
    }
    fake = FakeLLM(answer=planner_for(plans))
    run = EvalRun(settings=settings(), client=fake, matcher=LexicalMatcher(), price_of=price_of, concurrency=2)
    results = await run.run(items)
    by_id = {r.id: r for r in results}
    perfect = by_id["toolbench_7"]
    assert (perfect.node_f1, perfect.edge_f1, perfect.chain_f1, perfect.graph_f1) == (1.0, 1.0, 1.0, 1.0)
    half = by_id["wikihow_1"]  # hand-computed: docs/evals.md
    assert (half.node_f1, half.edge_f1, half.chain_f1, half.graph_f1) == pytest.approx((2 / 3, 0.0, 2 / 3, 4 / 7))
    s = summarize(results, matcher="lexical-dice", dataset="x", fmt="worfbench", settings=settings(), judge_model=None)
    assert (s["node_f1"], s["edge_f1"], s["chain_f1"], s["graph_f1"]) == pytest.approx((5 / 6, 0.5, 5 / 6, 11 / 14))
    assert s["matcher"] == "lexical-dice" and s["valid_rate"] == 1.0
    assert s["parallelism"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert s["cost_ratio"] == pytest.approx(0.2)  # every call priced again at five times its price
    assert s["strong_tier_cost_usd"] == pytest.approx(5 * s["cost_usd"])


async def test_a_fallback_scores_zero_and_counts_as_a_fallback_not_a_valid_plan() -> None:
    items = load(FIX / "taskbench_data.json", "taskbench")
    fake = FakeLLM(answer=lambda _m, msgs: "no plan" if prompt_kind(msgs[0]["content"]) == "planner" else "x")
    run = EvalRun(settings=settings(), client=fake, matcher=LexicalMatcher(), price_of=price_of)
    results = await run.run(items)
    # TaskBench items offer tools: they are planned, not run
    assert [(r.valid, r.fallback, r.status) for r in results] == [(False, True, "planned")] * 2
    assert all(r.repairs == 1 for r in results)  # one repair call each, then the fallback
    s = summarize(results, matcher="lexical-dice", dataset="x", fmt="taskbench", settings=settings(), judge_model=None)
    assert (s["valid_rate"], s["fallback_rate"], s["completed_rate"]) == (0.0, 1.0, 0.0)
    assert (s["tool_precision"], s["tool_recall"], s["tool_f1"]) == (0.0, 0.0, 0.0)  # a fallback names no tool
    assert s["repairs"] == 2 and s["fixes"] == 0
    assert (s["node_f1"], s["graph_f1"]) == (0.0, 0.0)
    assert s["parallelism"] is None and s["mean_subtasks"] is None


async def test_the_summary_counts_fixes_by_kind_fallbacks_joins_and_parallelism_by_shape() -> None:
    items = [i for i in load(OWN, "own") if i.shape in ("parallel", "fan-in", "chain")][:6]
    shapes = [i.shape for i in items]
    assert sorted(shapes) == ["chain", "chain", "fan-in", "fan-in", "parallel", "parallel"]

    def sub(d: str, deps: list[Any], tier: int = 1) -> dict[str, Any]:
        return {"description": d, "tier_hint": tier, "depends_on": deps}

    plans: dict[str, Any] = {
        items[shapes.index("parallel")].id: {"subtasks": [sub("a", []), sub("b", ["", 5]), sub("c", [], 4)]},
        items[shapes.index("fan-in")].id: {"subtasks": [sub("x", []), sub("y", []), sub("z", []), sub("pick", [0])]},
        items[shapes.index("chain")].id: {"subtasks": [sub("one", []), sub("two", ["0"]), sub("two", [1])]},
    }
    by_request = {i.request: plans.get(i.id) for i in items}

    def answer(_model: str, messages: list[Message]) -> str:
        kind = prompt_kind(messages[0]["content"])
        if kind != "planner":
            return answer_for(kind, messages[-1]["content"], 6)
        for request, plan in by_request.items():
            if escape(request) in messages[1]["content"]:
                return json.dumps(plan) if plan else "no plan"  # the rest fall back
        raise AssertionError("a request the test did not script")

    run = EvalRun(settings=settings(), client=FakeLLM(answer=answer), matcher=LexicalMatcher(), price_of=price_of)
    results = await run.run(items)
    s = summarize(results, matcher="lexical-dice", dataset="own", fmt="own", settings=settings(), judge_model=None)
    assert (s["valid_rate"], s["fallback_rate"]) == (0.5, 0.5)
    assert s["fixes_by_kind"] == {"dependency as text": 1, "dependency not an index": 1,
                                  "dependency out of range": 1, "duplicate subtask": 1, "tier out of range": 1}
    assert s["fixes"] == 5 and s["missing_joins"] == 1
    # parallel: 3 independent steps (1/3); fan-in: a chain of 2 among 4 (2/4); chain: 2 of 2 after the merge
    assert s["parallelism_by_shape"] == pytest.approx({"chain": 1.0, "fan-in": 0.5, "parallel": 1 / 3})
    fallen = [r for r in results if r.fallback]
    assert len(fallen) == 3 and all(r.parallelism is None and not any(r.checks.values()) for r in fallen)


async def test_the_judge_compares_with_one_direct_call_in_both_orders() -> None:
    items = load(OWN, "own")[:3]
    fake = FakeLLM(answer=planner_for({}))
    run = EvalRun(settings=settings(), client=fake, matcher=LexicalMatcher(), price_of=price_of,
                  judge_model="anthropic/claude-sonnet-4-5")
    results = await run.run(items)
    s = summarize(results, matcher="lexical-dice", dataset="own", fmt="own", settings=settings(),
                  judge_model="anthropic/claude-sonnet-4-5")
    j = s["judge"]
    assert (j["n"], j["win"], j["tie"], j["loss"], j["error"]) == (3, 3, 0, 0, 0)
    direct = [c for c in fake.calls if c.messages[0]["role"] == "user"]
    judged = [c for c in fake.calls if c.messages[0]["content"].startswith("You are an impartial judge")]
    assert len(direct) == 3 and {c.model for c in direct} == {"anthropic/claude-opus-4-5"}
    assert len(judged) == 6 and {c.model for c in judged} == {"anthropic/claude-sonnet-4-5"}
    direct_cost = sum(FAKE_PRICE.cost(Usage(max(1, len(c.messages[0]["content"]) // 4), len("a direct answer") // 4))
                      for c in direct)
    assert j["direct_cost_usd"] == pytest.approx(direct_cost)
    assert j["compound_cost_usd"] == pytest.approx(s["cost_usd"]) and j["judge_cost_usd"] > 0
    assert s["properties_pass_rate"] is not None and s["node_f1"] is None and s["graph_f1"] is None


# the command ---------------------------------------------------------------------------

def _recorded_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in RECORDING.read_text().splitlines()[1:]]


def test_eval_replays_the_shipped_recording_offline(tmp_path: Path) -> None:
    from compound.llm.pricing import price_of as real_price

    out = runner.invoke(app, ["eval", str(OWN), "--replay", str(RECORDING), "--limit", "9", "--json",
                              "--out", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    s = json.loads(out.stdout)
    # misses > 0: the prompts or the call sequence changed since the recording was made;
    # record it again with the command in evals/README.md
    assert s["replay"]["misses"] == 0, "the shipped recording is stale: re-record it (evals/README.md)"
    assert s["n"] == 9 and s["valid_rate"] == 1.0 and s["fallback_rate"] == 0.0
    assert set(s["parallelism_by_shape"]) == {"single", "chain", "parallel", "fan-in", "fan-out-join", "long",
                                             "ambiguous", "non-english", "injection"}
    assert s["graph_f1"] is None and s["node_f1"] is None  # the own dataset has no gold graphs
    rows = _recorded_rows()
    # every recorded call was replayed exactly once: the cost is the recording's
    assert s["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-9)
    opus = real_price("anthropic/claude-opus-4-5", Settings())
    assert s["strong_tier_cost_usd"] == pytest.approx(sum(opus.cost(Usage(*r["usage"])) for r in rows), rel=1e-9)
    assert s["cost_ratio"] == pytest.approx(s["cost_usd"] / s["strong_tier_cost_usd"])
    results = [json.loads(line) for line in (tmp_path / "report" / "results.jsonl").read_text().splitlines()]
    assert [r["shape"] for r in results] == ["single", "chain", "parallel", "fan-in", "fan-out-join", "long",
                                             "ambiguous", "non-english", "injection"]
    assert s["properties_pass_rate"] == pytest.approx(sum(all(r["checks"].values()) for r in results) / 9)
    single = results[0]
    assert len(single["subtasks"]) == 1 and all(single["checks"].values())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| valid_rate | 1.0000 |" in report and "| fallback_rate | 0.0000 |" in report
    assert "![quality](quality.png)" in report and "| shape | n | valid | fallback |" in report
    assert (tmp_path / "report" / "quality.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "cost_quality.png").stat().st_size > 1000
    again = runner.invoke(app, ["eval", "own", "--replay", str(RECORDING), "--limit", "9", "--json"])
    s2 = json.loads(again.stdout)
    assert {k: v for k, v in s2.items() if k != "dataset"} == {k: v for k, v in s.items() if k != "dataset"}


def test_replay_refuses_other_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_TIER3_MODELS", "anthropic/claude-sonnet-4-5")
    out = runner.invoke(app, ["eval", str(OWN), "--replay", str(RECORDING), "--limit", "1", "--json"])
    assert out.exit_code == 2
    assert "made with other models" in out.output and "tier3" in out.output


@pytest.mark.parametrize(("args", "message"), [
    (["--record", "a.jsonl", "--replay", "b.jsonl"], "exclude each other"),
    (["--format", "xml"], "unknown format 'xml'"),
    (["--matcher", "psychic"], "unknown matcher 'psychic'"),
    (["--judge", "openai/who-knows"], "openai/who-knows"),
])
def test_eval_usage_errors(args: list[str], message: str) -> None:
    out = runner.invoke(app, ["eval", str(OWN), *args])
    assert out.exit_code == 2 and message in out.output


def test_a_missing_dataset_is_named() -> None:
    out = runner.invoke(app, ["eval", "nope.jsonl"])
    assert out.exit_code == 2 and "no dataset file at nope.jsonl" in out.output


def test_record_against_the_simulator_then_replay(monkeypatch: pytest.MonkeyPatch, sim: Simulator,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    rec = tmp_path / "rec.jsonl"
    live = runner.invoke(app, ["eval", str(OWN), "--limit", "2", "--record", str(rec), "--json"])
    assert live.exit_code == 0, live.output
    calls = len(sim.calls())
    assert calls >= 2 * 3  # planner, subtasks and synthesis per item
    assert len(rec.read_text().splitlines()) == calls + 1  # a header, then one line per call
    monkeypatch.delenv("ANTHROPIC_BASE_URL")
    replayed = runner.invoke(app, ["eval", str(OWN), "--limit", "2", "--replay", str(rec), "--json"])
    assert replayed.exit_code == 0, replayed.output
    assert len(sim.calls()) == calls  # nothing reached the simulator
    a, b = json.loads(live.stdout), json.loads(replayed.stdout)
    assert b.pop("replay") == {"file": str(rec), "misses": 0}
    assert a == b


SMALL_MODEL = ROOT / "evals" / "recordings" / "own-smollm2-27.jsonl"


def test_the_small_local_models_recording_replays_with_every_item_planned(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct as the planner (docs/evals.md): every item got a plan, the
    model's own or the fallback, and the form its server took is reported."""
    config = tmp_path / "local.toml"
    config.write_text('[models."openai/smollm2-135m"]\napi_base = "http://127.0.0.1:8080/v1"\n'
                      "input_cost_per_token = 0.0\noutput_cost_per_token = 0.0\n")
    monkeypatch.setenv("COMPOUND_CONFIG", str(config))
    monkeypatch.setenv("COMPOUND_PLANNER_MODEL", "openai/smollm2-135m")
    # The recording's calls are those of whole plans without replanning: a replay asks
    # the calls it was made with (a streamed plan's repair call says more).
    monkeypatch.setenv("COMPOUND_STREAM_PLANS", "false")
    monkeypatch.setenv("COMPOUND_MAX_REPLANS", "0")
    out = runner.invoke(app, ["eval", str(OWN), "--replay", str(SMALL_MODEL), "--limit", "27", "--json"])
    assert out.exit_code == 0, out.output
    s = json.loads(out.stdout)
    assert s["replay"]["misses"] == 0, "the recording is stale: make it again (docs/evals.md)"
    assert s["n"] == 27 and s["completed_rate"] == 1.0
    assert s["valid_rate"] + s["fallback_rate"] == pytest.approx(1.0)
    assert s["structured_output"] == {"openai/smollm2-135m": "json_object_schema"}
    assert {"parallel", "fan-in", "fan-out-join"} <= set(s["parallelism_by_shape"])


async def test_a_streamed_plan_cut_to_its_started_entries_is_not_a_valid_plan(monkeypatch: pytest.MonkeyPatch,
                                                                             sim: Simulator) -> None:
    # entries 0 and 1 start while the plan streams; the whole answer has a cycle (2 -> 3
    # -> 2) and so has the repair's: the plan is cut to what was handed out, keeping entry
    # 2's dependency on an entry that never came (it is skipped)
    from compound.llm import build_client
    from compound.llm.pricing import price_of as priced

    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    sim.script.token_s = {"planner": 0.01}
    cyclic = json.dumps({"reasoning": "r", "subtasks": [
        {"description": d, "tier_hint": 1, "depends_on": deps}
        for d, deps in (("Look up fact 0", []), ("Use fact 0", [0]), ("Cycle a", [3]), ("Cycle b", [2]))]})
    sim.answer("planner", cyclic, cyclic)
    s = settings()
    run = EvalRun(settings=s, client=build_client(s), matcher=LexicalMatcher(), price_of=lambda m: priced(m, s))
    [item] = await run.run(load(OWN, "own")[:1])
    assert any(w.startswith("streamed plan cut:") for w in item.warnings)
    assert [sub["description"] for sub in item.subtasks] == ["Look up fact 0", "Use fact 0", "Cycle a"]
    assert [sub["depends_on"] for sub in item.subtasks] == [[], [0], []]  # the shape is what is in the plan
    assert item.width == 2 and item.status == "partial"  # waves (0, 2), (1)
    assert (item.valid, item.fallback, item.fixes) == (False, False, 0)
    summary = summarize([item], matcher="lexical-dice", dataset="x", fmt="own", settings=s, judge_model=None)
    assert (summary["valid_rate"], summary["fallback_rate"]) == (0.0, 0.0)
