"""Tool precision, recall and F1 in `compound eval`: a T-Eval or TaskBench item's tools
are the planner's catalogue, the item is planned (not run), and the tools its plan
names are scored against the gold plan's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from compound.cli import _register, app
from compound.core.settings import Settings
from compound.evals.datasets import load, tool_name
from compound.evals.runner import EvalRun, summarize
from compound.evals.similarity import LexicalMatcher
from compound.evals.tools import tool_prf
from compound.llm.base import Message, Price
from compound.simulator import Simulator, answer_for, prompt_kind
from tests.fixtures.fakes import FakeLLM

_register()
runner = CliRunner()
FIX = Path(__file__).parent / "fixtures" / "evals"


def settings() -> Settings:
    return Settings(retry_initial_wait_s=0.0, retry_max_wait_s=0.0)


@pytest.mark.parametrize(("named", "gold", "want"), [
    ({"a.x", "a.y"}, {"a.x", "a.y"}, (1.0, 1.0)),
    ({"a.x", "a.z"}, {"a.x", "a.y"}, (0.5, 0.5)),
    ({"a.x"}, {"a.x", "a.y"}, (1.0, 0.5)),
    (set(), {"a.x"}, (0.0, 0.0)),
    ({"a.x"}, set(), (0.0, 0.0)),
    (set(), set(), (1.0, 1.0)),  # no tool needed and none named
])
def test_tool_scores_table(named: set[str], gold: set[str], want: tuple[float, float]) -> None:
    prf = tool_prf(named, gold)
    assert (prf.precision, prf.recall) == want


@pytest.mark.parametrize(("fmt", "name", "want"), [
    ("teval", "FilmDouban.fetch_film_details", "FilmDouban.fetch_film_details"),
    ("taskbench", "Image-to-Text", "taskbench.Image-to-Text"),
    ("teval", ".hidden", "teval..hidden"),
])
def test_tool_names_as_catalogue_names(fmt: str, name: str, want: str) -> None:
    assert tool_name(fmt, name) == want


def test_the_readers_keep_the_tools() -> None:
    teval = {i.id: i for i in load(FIX / "teval_plan.json", "teval")}
    films = teval["12"]  # its system message lists three APIs; the gold uses two and ends with FinishAction
    assert [t.name for t in films.tools] == ["FilmDouban.now_playing_out_filter", "FilmDouban.fetch_film_details",
                                             "FilmDouban.coming_out_filter"]
    assert films.tools[2].description == "Films coming soon to cinemas in a region."
    assert films.tools[2].arguments == ("region",)
    assert films.gold_tools == {"FilmDouban.now_playing_out_filter", "FilmDouban.fetch_film_details"}
    assert {t.name for t in teval["13"].tools} == teval["13"].gold_tools  # no API list: the gold's tools
    bench = load(FIX / "taskbench_data.json", "taskbench")
    catalogue = ["taskbench.Image-to-Text", "taskbench.Text-to-Speech", "taskbench.Translation"]
    assert all([t.name for t in i.tools] == catalogue for i in bench)  # the file's tools, for every item
    assert [set(i.gold_tools) for i in bench] == [{"taskbench.Image-to-Text", "taskbench.Text-to-Speech"},
                                                  {"taskbench.Translation"}]
    assert all(t.available for t in bench[0].tools)


def scripted(plans: dict[str, list[list[str]]]) -> Callable[[str, list[Message]], str]:
    """Planner answers by request naming the given tools per subtask; anything else as
    the simulator answers it."""
    def answer(_model: str, messages: list[Message]) -> str:
        kind = prompt_kind(messages[0]["content"])
        if kind == "planner":
            for needle, tools in plans.items():
                if needle in messages[-1]["content"]:
                    return json.dumps({"subtasks": [{"description": f"step {k}", "tier_hint": 1, "depends_on": [],
                                                     "tools": names} for k, names in enumerate(tools)]})
        return answer_for(kind, messages[-1]["content"], 6)
    return answer


async def test_the_tools_a_plan_names_are_scored_and_nothing_runs() -> None:
    items = load(FIX / "taskbench_data.json", "taskbench")
    fake = FakeLLM(answer=scripted({
        "example.jpg": [["taskbench.Image-to-Text"], ["taskbench.Translation", "taskbench.Image-to-Text"]],
        "Translate": [["taskbench.Translation"]],
    }))
    run = EvalRun(settings=settings(), client=fake, matcher=LexicalMatcher(), price_of=lambda _m: Price(1e-6, 5e-6))
    results = {r.id: r for r in await run.run(items)}
    image = results["10017"]  # named {Image-to-Text, Translation}; gold {Image-to-Text, Text-to-Speech}
    assert image.tools == ["taskbench.Image-to-Text", "taskbench.Translation"]
    assert (image.tool_precision, image.tool_recall, image.tool_f1) == (0.5, 0.5, 0.5)
    hello = results["10018"]
    assert (hello.tool_precision, hello.tool_recall, hello.tool_f1) == (1.0, 1.0, 1.0)
    assert {r.status for r in results.values()} == {"planned"}  # planned only: the tools have no server
    assert {prompt_kind(c.messages[0]["content"]) for c in fake.calls} == {"planner"}
    planner_prompt = "\n".join(m["content"] for m in fake.calls[0].messages)
    assert "- taskbench.Text-to-Speech()" in planner_prompt  # the catalogue reached the planner as cards
    s = summarize(list(results.values()), matcher="lexical-dice", dataset="x", fmt="taskbench", settings=settings(),
                  judge_model=None)
    assert (s["tool_precision"], s["tool_recall"], s["tool_f1"]) == (0.75, 0.75, 0.75)
    assert s["node_f1"] is not None  # beside the graph scores


async def test_a_plan_naming_no_tools_scores_zero() -> None:
    items = load(FIX / "teval_plan.json", "teval")
    fake = FakeLLM(answer=scripted({"films": [[]], "papers": [[], []]}))
    run = EvalRun(settings=settings(), client=fake, matcher=LexicalMatcher(), price_of=lambda _m: Price(1e-6, 5e-6))
    results = await run.run(items)
    assert [(r.tools, r.tool_f1) for r in results] == [([], 0.0), ([], 0.0)]


def test_eval_reports_tool_scores_against_the_simulator(monkeypatch: pytest.MonkeyPatch, sim: Simulator,
                                                         tmp_path: Path) -> None:
    """The simulator's planner names a card's tool for a part of the request sharing a
    word with it: "image" names Image-to-Text; nothing in "read the description aloud"
    names Text-to-Speech; "Translate" names Translation."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    out = runner.invoke(app, ["eval", str(FIX / "taskbench_data.json"), "--format", "taskbench", "--json",
                              "--out", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    s = json.loads(out.stdout)
    assert s["tool_precision"] == 1.0 and s["tool_recall"] == 0.75
    assert s["tool_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert {c["kind"] for c in sim.calls()} == {"planner"}
    rows: list[dict[str, Any]] = [json.loads(line)
                                  for line in (tmp_path / "report" / "results.jsonl").read_text().splitlines()]
    assert [r["tools"] for r in rows] == [["taskbench.Image-to-Text"], ["taskbench.Translation"]]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| tool_f1 | 0.8333 |" in report and "| tool_recall | 0.7500 |" in report
