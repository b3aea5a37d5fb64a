"""The CLI with hostile text (Rich markup in prompts, descriptions, answers and
errors), narrow and wide terminals and piped output; the commands a new user reaches
for (tasks submit/result/approve); who owns a `compound run` task; budgets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from compound.api.app import create_app
from compound.cli import _register, app
from compound.cli.live import render_snapshot
from compound.cli.output import clip, print_outcome
from compound.core.settings import Settings
from compound.llm.litellm_client import LiteLLMClient
from compound.simulator import Simulator
from compound.store.models import Task
from compound.store.users import create_token, get_or_create_user
from tests.fixtures.served import serving_in_thread

_register()
runner = CliRunner()
HOSTILE = "[/bold] [red]x a[i] [x](y)"
TOKENS = ("[/bold]", "[red]x", "a[i]", "[x](y)")


@pytest.fixture
def served(sim: Simulator, sim_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, object]]:
    settings = sim_settings.model_copy(update={"rate_limit_per_minute": 1000})
    api = create_app(settings, client=LiteLLMClient(settings))
    with serving_in_thread(api) as url:
        token = create_token(api.state.store.engine, "dana")[1]
        monkeypatch.setenv("COMPOUND_URL", url)
        monkeypatch.setenv("COMPOUND_TOKEN", token)
        yield url, token, api


def list_tasks(engine: object, *, user_id: str) -> tuple[list[dict[str, str]], None]:
    """The user's tasks, newest first (the store's listing, read synchronously)."""
    with Session(engine) as s:  # type: ignore[arg-type]
        rows = s.exec(select(Task).where(Task.user_id == user_id).order_by(col(Task.created_at).desc())).all()
        return [{"id": t.id, "prompt": t.prompt} for t in rows], None


def _plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"reasoning": HOSTILE, "subtasks": [
        {"description": f"one {HOSTILE}", "tier_hint": 1, "depends_on": []},
        {"description": f"two {HOSTILE}", "tier_hint": 1, "depends_on": [0]}]}))
    return path


@pytest.mark.parametrize("columns", ["60", "200"])
def test_tasks_commands_print_hostile_text_verbatim(served: tuple[str, str, object], sim: Simulator,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    columns: str) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    sim.answer("synthesizer", f"the answer {HOSTILE}")
    out = runner.invoke(app, ["tasks", "submit", f"do {HOSTILE}", "--plan", str(_plan(tmp_path)), "--watch",
                              "--interval", "0.05"])
    assert out.exit_code == 0, out.output
    assert all(t in out.stdout for t in TOKENS), out.stdout
    task_id = out.output.split("submitted ")[1].split()[0]
    for args in (["tasks", "show", task_id], ["tasks", "result", task_id]):
        shown = runner.invoke(app, args)
        assert shown.exit_code == 0, (args, shown.output)
        assert all(t in shown.stdout for t in TOKENS), (args, shown.stdout)
    listed = runner.invoke(app, ["tasks", "list"])
    assert listed.exit_code == 0, listed.output
    listing = listed.stdout
    assert task_id in listing and "completed" in listing  # never cut, whatever the width
    assert max(len(line) for line in listing.splitlines()) <= int(columns)
    if columns == "200":
        assert all(t in listing for t in TOKENS), listing
    else:  # the prompt is cut, with an ellipsis, and never read as markup
        assert "do [/b" in listing and "…" in listing, listing


def test_result_is_markdown_in_a_terminal_and_raw_when_piped(served: tuple[str, str, object], sim: Simulator,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = "# Title\n\nSome **bold** text with `a[i]` and [x](y)."
    sim.answer("synthesizer", answer)
    task_id = runner.invoke(app, ["tasks", "submit", "p", "--plan", str(_plan(tmp_path))]).stdout.strip()
    done = runner.invoke(app, ["tasks", "watch", task_id, "--interval", "0.05"])
    assert done.exit_code == 0, done.output
    piped = runner.invoke(app, ["tasks", "result", task_id])
    assert piped.exit_code == 0 and piped.stdout == answer + "\n"
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "0")
    monkeypatch.setenv("COLUMNS", "80")
    term = runner.invoke(app, ["tasks", "result", task_id])
    assert term.exit_code == 0 and "Title" in term.stdout and "a[i]" in term.stdout
    assert "**bold**" not in term.stdout and "# Title" not in term.stdout


def test_submit_hold_then_approve(served: tuple[str, str, object], tmp_path: Path) -> None:
    held = runner.invoke(app, ["tasks", "submit", "p", "--plan", str(_plan(tmp_path)), "--hold", "--watch",
                               "--interval", "0.05"])
    assert held.exit_code == 0 and "tasks approve" in held.stdout, held.output
    task_id = held.output.split("submitted ")[1].split()[0]
    approved = runner.invoke(app, ["tasks", "approve", task_id])
    assert approved.exit_code == 0 and task_id in approved.stdout, approved.output
    done = runner.invoke(app, ["tasks", "watch", task_id, "--interval", "0.05"])
    assert done.exit_code == 0 and "completed" in done.stdout
    again = runner.invoke(app, ["tasks", "approve", task_id])
    assert again.exit_code == 1 and "409" in again.output


def test_submit_hold_prints_the_id_once_the_plan_is_there(served: tuple[str, str, object], sim: Simulator) -> None:
    """The README's tour: `HELD=$(compound tasks submit ... --hold)` then at once
    `compound tasks approve "$HELD"`, with a planner that takes its time."""
    sim.script.latency_s = 0.3
    held = runner.invoke(app, ["tasks", "submit", "Draft a launch plan and a budget", "--hold"])
    assert held.exit_code == 0, held.output
    task_id = held.stdout.strip()
    assert task_id.startswith("t_") and "tasks approve" in held.stderr
    approved = runner.invoke(app, ["tasks", "approve", task_id])
    assert approved.exit_code == 0 and f"{task_id} approved" in approved.stdout, approved.output


def test_failed_task_shows_why(served: tuple[str, str, object], sim: Simulator, tmp_path: Path) -> None:
    from compound.simulator import Failure

    sim.fail(*[Failure(status=400)] * 40)
    out = runner.invoke(app, ["tasks", "submit", "p", "--plan", str(_plan(tmp_path)), "--watch",
                              "--interval", "0.05"])
    assert out.exit_code == 1
    assert "error:" in out.stdout and "simulated error 400" in " ".join(out.stdout.split()), out.stdout
    task_id = out.output.split("submitted ")[1].split()[0]
    shown = runner.invoke(app, ["tasks", "show", task_id])
    assert "error:" in shown.stdout
    result = runner.invoke(app, ["tasks", "result", task_id])
    assert result.exit_code == 1 and "has no answer" in result.output


def test_run_with_hostile_text_belongs_to_a_user(served: tuple[str, str, object], sim: Simulator,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 sim_settings: Settings) -> None:
    _url, _token, api = served
    engine = api.state.store.engine  # type: ignore[attr-defined]
    monkeypatch.setenv("COMPOUND_DATABASE_URL", sim_settings.database_url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_BASE_URL", sim.url + "/v1")  # type: ignore[attr-defined]
    monkeypatch.setenv("COLUMNS", "60")
    sim.answer("synthesizer", f"ran {HOSTILE}")
    out = runner.invoke(app, ["run", f"run {HOSTILE}", "--plan", str(_plan(tmp_path))])
    assert out.exit_code == 0, out.output
    assert all(t in out.stdout for t in TOKENS), out.stdout
    dana = get_or_create_user(engine, "dana").id  # the user of COMPOUND_TOKEN
    mine, _ = list_tasks(engine, user_id=dana)
    assert mine and mine[0]["prompt"] == f"run {HOSTILE}"
    assert mine[0]["id"] in runner.invoke(app, ["tasks", "list"]).stdout
    monkeypatch.delenv("COMPOUND_TOKEN")
    assert runner.invoke(app, ["run", "solo", "--plan", str(_plan(tmp_path))]).exit_code == 0
    local, _ = list_tasks(engine, user_id=get_or_create_user(engine, "local").id)
    assert [t["prompt"] for t in local] == ["solo"]
    assert runner.invoke(app, ["run", "x", "--plan", str(_plan(tmp_path)), "--user", "eve"]).exit_code == 0
    assert list_tasks(engine, user_id=get_or_create_user(engine, "eve").id)[0][0]["prompt"] == "x"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_zero_budget_is_refused(value: str) -> None:
    for args in (["run", "x", "--budget", value], ["tasks", "submit", "x", "--budget", value]):
        out = runner.invoke(app, args)
        assert out.exit_code == 2 and "more than 0" in out.output, out.output


@pytest.mark.parametrize("width", [60, 120])
@pytest.mark.parametrize("terminal", [True, False])
def test_snapshot_and_outcome_render_hostile_text(width: int, terminal: bool) -> None:
    snap = {"id": "t_0297c1f66a1b2c3d", "status": "canceled", "total_cost_usd": 0.0125, "budget_usd": 1.0,
            "error": f"canceled {HOSTILE}", "result": None, "planner": {"cost_usd": 0.0005},
            "worst_case": {"calls": 1, "cost_usd": 0.01},
            "subtasks": [{"index": 0, "status": "canceled", "tier_assigned": 1, "model": "m", "started_at": None,
                          "completed_at": None, "cost_usd": 0.002, "description": f"step {HOSTILE}",
                          "depends_on": [], "error": f"skipped {HOSTILE}"}]}
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=terminal, color_system=None)
    console.print(render_snapshot(snap))
    print_outcome(console, snap)
    text = buf.getvalue()
    assert all(t in text for t in TOKENS), text
    assert "held for calls canceled in flight" in " ".join(text.split()) and "0.010000" in text


@pytest.mark.parametrize(("text", "width", "want"), [
    ("short", 10, "short"),
    ("the dependency 3 failed so this step was skipped", 24, "the dependency 3…"),
    ("abcdefghijklmnopqrstuvwxyz", 10, "abcdefghi…"),
    ("multi\nline   text", 40, "multi line text"),
])
def test_clip_cuts_at_a_word_with_an_ellipsis(text: str, width: int, want: str) -> None:
    assert clip(text, width) == want and len(clip(text, width)) <= width
