"""Config traps: JSON lists in env vars, misspelt models,
postgres:// URLs, a missing PostgreSQL driver."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from compound.cli import _register, app
from compound.core.errors import ConfigError
from compound.core.settings import load_settings
from compound.store.db import make_engine, normalise_url

_register()
runner = CliRunner()


@pytest.mark.parametrize("value", ['["openai/gpt-4.1-mini","anthropic/claude-haiku-4-5"]',
                                   "openai/gpt-4.1-mini, anthropic/claude-haiku-4-5",
                                   '[ "openai/gpt-4.1-mini" , "anthropic/claude-haiku-4-5" ]'])
def test_list_variables_take_commas_or_json(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("COMPOUND_TIER1_MODELS", value)
    assert load_settings().tier1_models == ["openai/gpt-4.1-mini", "anthropic/claude-haiku-4-5"]


def test_a_broken_json_list_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_TIER1_MODELS", '["a", 1]')
    with pytest.raises(ConfigError, match="tier1_models"):
        load_settings()


def test_a_misspelt_model_is_unknown_with_close_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_TIER1_MODELS", "anthropic/claude-haiku-4.5")
    r = runner.invoke(app, ["plan", "x"])
    assert r.exit_code == 2
    assert "unknown model 'anthropic/claude-haiku-4.5' (in tier1_models)" in r.output
    assert "did you mean 'anthropic/claude-haiku-4-5'" in r.output
    assert "price" not in r.output.split("(a model of your own")[0]


@pytest.mark.parametrize(("url", "want"), [
    ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ("sqlite:///./x.db", "sqlite:///./x.db")])
def test_postgres_urls(url: str, want: str) -> None:
    assert normalise_url(url) == want


def test_postgres_scheme_is_accepted_in_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_DATABASE_URL", "postgres://u@127.0.0.1/db")
    assert load_settings().database_url == "postgresql://u@127.0.0.1/db"


def test_a_missing_psycopg_is_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    with pytest.raises(ConfigError, match=r"compound\[postgres\]"):
        make_engine("postgres://u@127.0.0.1/db")
    monkeypatch.setenv("COMPOUND_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    r = runner.invoke(app, ["tokens", "list"])
    assert r.exit_code == 2 and "compound[postgres]" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(("latency", "latency_ms", "data", "want"), [
    (1.5, 0, {}, 1.5),
    (None, 250, {}, 0.25),
    (None, 0, {"latency_s": 2.0}, 2.0),
    (0.5, 0, {"latency_s": 2.0}, 0.5),
    (None, 0, {}, 0.0),
])
def test_sim_latency_options(latency: float | None, latency_ms: int, data: dict[str, Any], want: float) -> None:
    from compound.cli.sim import script_for

    assert script_for(latency=latency, latency_ms=latency_ms, data=data).latency_s == want


def test_the_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parent.parent / "docs" / "compound.example.toml"
    monkeypatch.setenv("COMPOUND_CONFIG", str(example))
    s = load_settings()
    assert s.tier1_models and s.default_budget_usd > 0
    assert s.model_config_for("openai/my-local-model").input_cost_per_token == 0.0
    from compound.cli.common import check_models
    from compound.llm.pricing import check_prices

    check_models(s)
    check_prices(s)
