"""The CLI: tokens (only the token on stdout, only its hash stored), config show
(secrets masked), plan and run against the simulator over HTTP, db upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect
from sqlmodel import Session, select
from typer.testing import CliRunner

from compound.cli import _register, app
from compound.simulator import Simulator
from compound.store.db import create_all, make_engine
from compound.store.models import ApiToken
from compound.store.users import hash_token

_register()
runner = CliRunner()


def test_tokens_create_list_revoke(cli_env: str) -> None:
    out = runner.invoke(app, ["tokens", "create", "--user", "ann", "--scope", "read,submit"])
    assert out.exit_code == 0, out.output
    token = out.stdout.strip()
    assert token.startswith("cpd_") and len(token) > 40 and "\n" not in token
    engine = make_engine(cli_env)
    with Session(engine) as s:
        rows = s.exec(select(ApiToken)).all()
    assert [r.token_hash for r in rows] == [hash_token(token)]
    listed = runner.invoke(app, ["tokens", "list"])
    assert "ann" in listed.stdout and token not in listed.stdout and rows[0].token_hash not in listed.stdout
    assert runner.invoke(app, ["tokens", "revoke", rows[0].id]).exit_code == 0
    assert runner.invoke(app, ["tokens", "revoke", "tok_nope"]).exit_code == 1
    bad = runner.invoke(app, ["tokens", "create", "--user", "ann", "--scope", "root"])
    assert bad.exit_code == 2 and "unknown scope" in bad.output


def test_config_show_masks_secrets(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + "X" * 30)
    monkeypatch.setenv("COMPOUND_DATABASE_URL", "postgresql://bob:hunter2@db/compound")
    out = runner.invoke(app, ["config", "show"])
    assert out.exit_code == 0
    data = json.loads(out.stdout)
    assert "X" * 30 not in out.stdout and "hunter2" not in out.stdout
    assert data["anthropic_api_key"].startswith("sk-") and data["max_concurrency"] == 16
    monkeypatch.setenv("COMPOUND_MAX_CONCURRENCY", "zero")
    bad = runner.invoke(app, ["config", "show"])
    assert bad.exit_code == 2 and "max_concurrency" in bad.output


def test_plan_prints_waves_path_and_cost(cli_env: str) -> None:
    out = runner.invoke(app, ["plan", "find flights and find hotels and compare"])
    assert out.exit_code == 0, out.output
    assert "wave 0" in out.stdout and "wave 1" in out.stdout and "critical path: 0 -> 3" in out.stdout
    assert "worst case: $" in out.stdout and "likely cost: $" in out.stdout
    js = runner.invoke(app, ["plan", "a and b", "--json"])
    assert len(json.loads(js.stdout)["subtasks"]) == 3


def test_plan_reports_a_planner_that_never_gives_a_plan(cli_env: str, sim: Simulator) -> None:
    sim.answer("planner", "no", "still no")
    out = runner.invoke(app, ["plan", "x"])
    assert out.exit_code == 1 and "not JSON" in out.output


def test_run_prints_the_answer_and_costs(cli_env: str, tmp_path: Path) -> None:
    out = runner.invoke(app, ["run", "look up a and look up b", "--budget", "0.5"])
    assert out.exit_code == 0, out.output
    assert "Final answer built from 3 results" in out.stdout and "cost by model" in out.stdout
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"subtasks": [{"description": "x", "depends_on": [0]}]}))
    bad = runner.invoke(app, ["run", "p", "--plan", str(plan)])
    assert bad.exit_code == 1 and "depends on itself" in bad.output
    js = runner.invoke(app, ["run", "one thing", "--json"])
    assert json.loads(js.stdout)["status"] == "completed"


def test_unknown_model_prices_refuse_to_start(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_TIER2_MODELS", "openai/who-knows")
    out = runner.invoke(app, ["run", "x"])
    assert out.exit_code == 2 and "openai/who-knows" in out.output and "input_cost_per_token" in out.output


def test_db_upgrade_builds_the_same_tables_as_the_models(cli_env: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    monkeypatch.setenv("COMPOUND_DATABASE_URL", url)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    migrated = make_engine(url)
    direct = make_engine(f"sqlite:///{tmp_path / 'direct.db'}")
    create_all(direct)
    def shape(e: Engine) -> dict[str, list[str]]:
        insp = inspect(e)
        return {t: sorted(c["name"] for c in insp.get_columns(t)) for t in insp.get_table_names() if t != "alembic_version"}
    assert shape(migrated) == shape(direct)


@pytest.mark.parametrize("url", ["nonsense://x", "sqlite:////nonexistent/dir/x.db",
                                 "postgresql://nobody:secretpw@127.0.0.1:1/db"])
def test_a_store_that_cannot_open_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("COMPOUND_DATABASE_URL", url)
    for args in (["tokens", "list"], ["serve", "--port", "1"]):
        out = runner.invoke(app, args)
        assert out.exit_code == 2 and "cannot open the store" in out.output, out.output
        assert "Traceback" not in out.output and "secretpw" not in out.output


def test_plan_shows_the_tools_of_the_configured_servers(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.mcp_tools import ROOT, STDIO_COMMAND

    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps(
        {"local": {"command": STDIO_COMMAND, "cwd": str(ROOT), "allow": ["echo", "count"]}}))
    out = runner.invoke(app, ["plan", "echo the greeting text and count the visitors", "--json"])
    assert out.exit_code == 0, out.output
    assert [s["tools"] for s in json.loads(out.stdout)["subtasks"]] == [["local.echo"], ["local.count"], []]
    tree = runner.invoke(app, ["plan", "echo the greeting text"])
    assert tree.exit_code == 0, tree.output
    assert "tools: local.echo" in tree.stdout
