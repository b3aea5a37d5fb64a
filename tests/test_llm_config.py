"""`compound config show` says which adapter serves each configured model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compound.cli import _register, app

_register()


def test_config_show_lists_the_adapter_of_each_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "compound.toml"
    config.write_text('[models."openai/gpt-4.1"]\nadapter = "litellm"\n')
    monkeypatch.setenv("COMPOUND_CONFIG", str(config))
    monkeypatch.setenv("COMPOUND_TIER1_MODELS", "anthropic/claude-haiku-4-5,openai/gpt-4.1-mini")
    monkeypatch.setenv("COMPOUND_TIER2_MODELS", "gemini/gemini-2.0-flash,openai/gpt-4.1")
    out = CliRunner().invoke(app, ["config", "show"])
    assert out.exit_code == 0, out.output
    adapters = json.loads(out.stdout)["adapters"]
    assert adapters["anthropic/claude-haiku-4-5"] == "anthropic"
    assert adapters["openai/gpt-4.1-mini"] == "openai"
    assert adapters["gemini/gemini-2.0-flash"] == "litellm"
    assert adapters["openai/gpt-4.1"] == "litellm"  # forced by the config file


def test_an_unknown_adapter_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "compound.toml"
    config.write_text('[models."openai/gpt-4.1"]\nadapter = "langchain"\n')
    monkeypatch.setenv("COMPOUND_CONFIG", str(config))
    out = CliRunner().invoke(app, ["config", "show"])
    assert out.exit_code == 2 and "adapter" in out.output
