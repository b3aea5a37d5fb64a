"""Settings from the environment and a TOML file, and log redaction."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import structlog

from compound.core.errors import ConfigError
from compound.core.logging import configure_logging, redact_text
from compound.core.settings import load_settings


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///./compound.db" and s.synthesis_tier == 2 and s.max_subtasks == 20
    monkeypatch.setenv("COMPOUND_TIER1_MODELS", " openai/gpt-4.1-mini , anthropic/claude-haiku-4-5 ")
    monkeypatch.setenv("COMPOUND_MAX_CONCURRENCY", "4")
    s = load_settings()
    assert s.tier1_models == ["openai/gpt-4.1-mini", "anthropic/claude-haiku-4-5"] and s.max_concurrency == 4


def test_toml_file_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "compound.toml"
    cfg.write_text('max_subtasks = 7\ndefault_budget_usd = 2.5\n[models."openai/local"]\n'
                   'api_base = "http://127.0.0.1:9000/v1"\ninput_cost_per_token = 0.0\noutput_cost_per_token = 0.0\n')
    monkeypatch.setenv("COMPOUND_CONFIG", str(cfg))
    monkeypatch.setenv("COMPOUND_DEFAULT_BUDGET_USD", "0.75")
    s = load_settings()
    assert s.max_subtasks == 7 and s.default_budget_usd == 0.75
    assert s.model_config_for("openai/local").api_base == "http://127.0.0.1:9000/v1"


@pytest.mark.parametrize(("name", "value", "field"), [
    ("COMPOUND_SYNTHESIS_TIER", "5", "synthesis_tier"),
    ("COMPOUND_DEFAULT_BUDGET_USD", "-1", "default_budget_usd"),
    ("COMPOUND_TIER2_MODELS", " , ", "tier2_models"),
    ("COMPOUND_SQLITE_SYNCHRONOUS", "maybe", "sqlite_synchronous"),
])
def test_bad_values_name_the_field(monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert field in info.value.message


def test_a_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMPOUND_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not a readable file"):
        load_settings()


@pytest.mark.parametrize("secret", ["sk-ant-api03-abcdefghijklmnop", "sk-proj-ABCDEFGHIJKLMNOPQRST",
                                    "cpd_abcdefghijklmnopqrstuvwx"])
def test_logs_redact_keys_and_tokens(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("INFO", json=True)
    structlog.get_logger("t").info("calling", detail=f"with {secret}", headers={"Authorization": f"Bearer {secret}"},
                                   api_key=secret)
    line = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert secret not in buf.getvalue()
    assert line["event"] == "calling" and "[redacted]" in line["detail"]
    assert redact_text(f"Authorization: Bearer {secret}") == "Authorization: Bearer [redacted]"
    structlog.reset_defaults()
