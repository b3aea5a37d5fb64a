"""The judged runs of docs/evals.md ("Cascades and replanning, judged") replayed
offline from their recordings (docs/evals/judged/): every call answered from the
recording, the summary the one committed beside it, and each run's row of the docs
table what the replay reports, so the table cannot drift from the runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from compound.cli import _register, app

_register()
runner = CliRunner()
ROOT = Path(__file__).parent.parent
HERE = ROOT / "docs" / "evals" / "judged"
DOCS = ROOT / "docs" / "evals.md"
SONNET = "anthropic/claude-sonnet-4-5"
CASCADE = {"COMPOUND_SYNTHESIS_TIER": "3", "COMPOUND_TIER3_MODELS": SONNET}

# name -> the settings it was recorded with (docs/evals/judged/record.sh)
RUNS: dict[str, dict[str, str]] = {
    "cascade-off": CASCADE,
    "cascade-on": {**CASCADE, "COMPOUND_TIER2_MODELS": f"anthropic/claude-haiku-4-5,{SONNET}",
                   "COMPOUND_TIER2_CASCADE": "true"},
    "replan-off": {"COMPOUND_MAX_REPLANS": "0"},
    "replan-on": {"COMPOUND_MAX_REPLANS": "1"},
}


def table_row(name: str, s: dict[str, Any]) -> str:
    """The run's row in docs/evals.md's table, from its summary."""
    j, calls = s["judge"], s["calls_by_kind"]
    statuses = ", ".join(f"{v} {k}" for k, v in s["statuses"].items())
    return (f"| {name} | {statuses} | {s['replan_rounds']} | {calls.get('planner', 0)} | {calls.get('subtask', 0)} | "
            f"{calls.get('check', 0)} | {calls.get('synthesis', 0)} | {s['cost_usd']:.4f} | "
            f"{s['strong_tier_cost_usd']:.4f} | {s['cost_ratio']:.3f} | {j['n']} | {j['win']} | {j['tie']} | "
            f"{j['loss']} | {j['error']} | {j['direct_cost_usd']:.4f} | {j['judge_cost_usd']:.4f} |")


def replay(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("COMPOUND_CONFIG", str(HERE / "judge.toml"))
    for key, value in RUNS[name].items():
        monkeypatch.setenv(key, value)
    out = runner.invoke(app, ["eval", "own", "--limit", "9", "--concurrency", "1", "--judge", "openai/sim-judge",
                              "--replay", str(HERE / f"{name}.jsonl"), "--json"])
    assert out.exit_code == 0, out.output
    s: dict[str, Any] = json.loads(out.stdout)
    assert s.pop("replay")["misses"] == 0, f"{name}.jsonl is stale: record it again (docs/evals/judged/record.sh)"
    return s


@pytest.mark.parametrize("name", list(RUNS))
def test_a_judged_run_replays_to_its_summary_and_its_docs_row(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = replay(name, monkeypatch)
    assert s == json.loads((HERE / f"{name}.summary.json").read_text())
    assert table_row(name, s) in DOCS.read_text(), f"docs/evals.md's row for {name} differs from its replay"


def test_the_runs_differ_by_the_mechanism_they_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the scripts make happen: half the cascade's checks fail, so half its drafts
    go on to Sonnet; with replanning off, five failed subtasks leave tasks failed or
    partial, and a round each recovers three of them."""
    runs = {name: json.loads((HERE / f"{name}.summary.json").read_text()) for name in RUNS}
    off, on = runs["cascade-off"]["calls_by_kind"], runs["cascade-on"]["calls_by_kind"]
    assert "check" not in off and on["check"] > 0
    assert on["subtask"] - off["subtask"] == on["check"] // 2  # a failed check's second call
    plain, replanned = runs["replan-off"], runs["replan-on"]
    assert plain["replan_rounds"] == 0 and replanned["replan_rounds"] == 5
    assert plain["statuses"].get("completed", 0) + 3 == replanned["statuses"]["completed"]
    assert all(r["completed_rate"] == 1.0 for r in (runs["cascade-off"], runs["cascade-on"]))


async def test_a_recorded_provider_error_is_raised_again_on_replay(tmp_path: Path) -> None:
    from compound.core.errors import ProviderError
    from compound.evals.replay import RecordingClient, ReplayClient
    from compound.llm.base import Message
    from tests.fixtures.fakes import FakeLLM

    refused = ProviderError("model-x: 400 simulated refusal", status=400, model="model-x")
    fake = FakeLLM(queue=[refused, "fine", ProviderError("overloaded", status=529, model="model-x")])
    path = tmp_path / "rec.jsonl"
    rec = RecordingClient(fake, path, header={})
    ask: list[Message] = [{"role": "user", "content": "q"}]
    with pytest.raises(ProviderError):
        await rec.complete(model="model-x", messages=ask, max_tokens=8)
    assert (await rec.complete(model="model-x", messages=ask, max_tokens=8)).text == "fine"
    with pytest.raises(ProviderError):
        async for _ in rec.stream(model="model-x", messages=ask, max_tokens=8):
            pass
    replayed = ReplayClient(path)
    with pytest.raises(ProviderError) as first:
        await replayed.complete(model="model-x", messages=ask, max_tokens=8)
    assert (first.value.message, first.value.status, first.value.transient) == ("model-x: 400 simulated refusal",
                                                                                400, False)
    assert (await replayed.complete(model="model-x", messages=ask, max_tokens=8)).text == "fine"
    with pytest.raises(ProviderError) as third:
        await replayed.complete(model="model-x", messages=ask, max_tokens=8)
    assert (third.value.status, third.value.transient) == (529, True) and replayed.misses == 0
