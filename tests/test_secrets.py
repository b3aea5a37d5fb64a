"""Every configured secret, whatever its shape, is redacted on every path out: the
registry (compound.core.secrets), then a provider error that echoes keys of several
shapes through the whole pipeline (store, snapshot, SSE, progress route, logs)."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr

from compound.api.app import create_app
from compound.core import secrets
from compound.core.logging import configure_logging
from compound.core.settings import ModelConfig, Settings
from compound.llm.errors import scrub
from compound.simulator import Failure, Simulator
from compound.store.users import create_token
from tests.fixtures.sim import sim_model_configs

# Keys of shapes no pattern knows, and of shapes some do: each must go whatever its shape.
ANTHROPIC = "ant-live-Zq8v2LmN5pR7tY1wX4kB"  # not shaped sk-ant-...
GEMINI = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
AZURE = "4f9c2e8a7b1d3f6e0a5c9b2d8e7f1a3c"  # 32 hex, like an Azure OpenAI key
GROQ = "gsk_W9kq2LxV7bN4mT8rY1cZ5hJ3dF6gA0sPeQuOiRtYwX2vB7nM"
GATEWAY = "local gateway says: open-s3same!"  # a local gateway's arbitrary string
URL_PASSWORD = "Tr0ub4dor&3-horse"  # in user:password@ of a configured base URL
QUERY_KEY = "qk-77aa99bb11cc33dd"  # in ?api_key= of a configured base URL
TOML_KEY = "toml-held-key-5512-zeta"  # a key the settings hold (as the TOML file would)
KEYS = [ANTHROPIC, GEMINI, AZURE, GROQ, GATEWAY, URL_PASSWORD, QUERY_KEY, TOML_KEY]


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    secrets.reset()
    yield
    secrets.reset()  # the next test builds it from its own environment


# The registry -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("ANTHROPIC_API_KEY", ANTHROPIC),
    ("GEMINI_API_KEY", GEMINI),
    ("AZURE_API_KEY", AZURE),
    ("AZURE_OPENAI_API_KEY", AZURE),
    ("GROQ_API_KEY", GROQ),
    ("MISTRAL_API_KEY", "mst-0f8e7d6c5b4a3928"),
    ("REPLICATE_API_TOKEN", "repl-0f8e7d6c5b4a3928"),
    ("WATSONX_APIKEY", "wx-0f8e7d6c5b4a3928"),
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("AZURE_AD_TOKEN", "eyJ0eXAiOiJKV1QiLCJhbGciOi.payload.sig"),
    ("LITELLM_MASTER_KEY", GATEWAY),
    ("COMPOUND_TOKEN", "cpd_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg"),
])
def test_a_key_variable_of_any_provider_is_redacted(name: str, value: str) -> None:
    secrets.configure(environ={name: value})
    out = secrets.redact(f"provider said: bad key '{value}' (len {len(value)})")
    assert value not in out and "[redacted]" in out and out.startswith("provider said: bad key")


@pytest.mark.parametrize(("environ", "secret"), [
    ({"OPENAI_BASE_URL": f"https://gw-user:{URL_PASSWORD}@gateway.internal/v1"}, URL_PASSWORD),
    ({"HTTPS_PROXY": "http://proxyuser:pr0xy-pass-99@proxy:3128"}, "pr0xy-pass-99"),
    ({"AZURE_API_BASE": f"https://x.openai.azure.com/?api_key={QUERY_KEY}&v=1"}, QUERY_KEY),
    ({"GEMINI_API_BASE": f"https://gl.example/v1?key={QUERY_KEY}"}, QUERY_KEY),
    ({"COMPOUND_DATABASE_URL": "postgresql://app:db-pass-4417@db/compound"}, "db-pass-4417"),
])
def test_credentials_inside_configured_urls_are_redacted(environ: dict[str, str], secret: str) -> None:
    secrets.configure(environ=environ)
    # Anywhere in text: the password alone, not only inside its URL.
    assert secrets.redact(f"auth failed for {secret}!") == "auth failed for [redacted]!"


def test_percent_encoded_and_json_escaped_forms_are_redacted_too() -> None:
    secret = 'p@ss/w"rd:with-specials'
    secrets.configure(environ={"MY_GATEWAY_PASSWORD": secret})
    for form in (secret, "p%40ss%2Fw%22rd%3Awith-specials", json.dumps(secret)[1:-1]):
        assert secrets.redact(f"x {form} y") == "x [redacted] y", form


def test_the_settings_secrets_are_redacted_whatever_holds_them() -> None:
    settings = Settings(
        anthropic_api_key=SecretStr(TOML_KEY),
        database_url="postgresql://app:db-pass-4417@db/compound",
        models={"openai/gw": ModelConfig(api_base=f"http://u:{URL_PASSWORD}@127.0.0.1:9/v1?api_key={QUERY_KEY}",
                                         input_cost_per_token=0, output_cost_per_token=0)})
    secrets.configure(settings, environ={})
    text = f"echo {TOML_KEY} {URL_PASSWORD} {QUERY_KEY} db-pass-4417"
    assert secrets.redact(text) == "echo [redacted] [redacted] [redacted] [redacted]"


@pytest.mark.parametrize("value", ["sim", "1", "true", "EMPTY", "dummy", "local", "sk-1234"])
def test_values_shorter_than_the_minimum_do_not_scrub_ordinary_text(value: str) -> None:
    assert len(value) < secrets.MIN_SECRET_LENGTH
    secrets.configure(environ={"OPENAI_API_KEY": value, "HOSTED_VLLM_API_KEY": value})
    text = f"the simulator answered 1 true EMPTY dummy local sk-1234 {value}"
    assert secrets.redact(text) == text


def test_variables_not_named_like_secrets_are_not_collected() -> None:
    secrets.configure(environ={"COMPOUND_TIER1_MODELS": "anthropic/claude-haiku-4-5", "HOME": "/home/someone",
                               "COMPOUND_TOKEN_CACHE_S": "0.5"})
    assert secrets.registry().values == frozenset()
    assert secrets.redact("anthropic/claude-haiku-4-5 at /home/someone") == "anthropic/claude-haiku-4-5 at /home/someone"


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Bearer cpd_AbCdEfGhIjKlMnOpQrStUvWx", "Authorization: Bearer [redacted]"),
    ("key sk-ant-api03-abcdefghijklmnop here", "key [redacted] here"),
    ("key AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY here", "key [redacted] here"),
    ("key gsk_W9kq2LxV7bN4mT8rY1cZ5hJ3dF6gA0sP here", "key [redacted] here"),
    ("calling https://bob:hunter22@gw.example/v1 now", "calling https://bob:[redacted]@gw.example/v1 now"),
    ("GET https://gw.example/v1/models?api_key=abc123&x=1", "GET https://gw.example/v1/models?api_key=[redacted]&x=1"),
    ("headers {'api-key': 'f00dfeedf00dfeed'}", "headers {'api-key': '[redacted]'}"),
    ("settings openai_api_key=f00dfeedf00dfeed", "settings openai_api_key=[redacted]"),
    ("BEARER abcdefghijklmnop", "BEARER [redacted]"),
    ("aws AKIAIOSFODNN7EXAMPLE used", "aws [redacted] used"),
    ("http://127.0.0.1:8787/v1 answered 401", "http://127.0.0.1:8787/v1 answered 401"),  # a port is no password
    ("task t_3f2a9c0d1e4b5a6c3f2a9c0d1e4b5a6c", "task t_3f2a9c0d1e4b5a6c3f2a9c0d1e4b5a6c"),  # hex ids stay
])
def test_secrets_nobody_configured_are_redacted_by_shape(text: str, expected: str) -> None:
    secrets.configure(environ={})
    assert secrets.redact(text) == expected


def test_scrub_takes_the_call_key_and_every_configured_secret() -> None:
    secrets.configure(environ={"ANTHROPIC_API_KEY": ANTHROPIC})
    out = scrub(f"openai said: {GATEWAY} and {ANTHROPIC}", (GATEWAY,))
    assert GATEWAY not in out and ANTHROPIC not in out and out == "openai said: [redacted] and [redacted]"


def test_log_lines_redact_every_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI)
    monkeypatch.setenv("AZURE_API_KEY", AZURE)
    secrets.configure()
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("INFO", json=True)
    try:
        err = RuntimeError(f"401 from provider: {AZURE}")
        structlog.get_logger("t").warning("call failed", detail=f"key {GEMINI}", error=err, items=[AZURE])
        try:
            raise err
        except RuntimeError:
            structlog.get_logger("t").exception("with a traceback")
    finally:
        structlog.reset_defaults()
    out = buf.getvalue()
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["event"] for line in lines] == ["call failed", "with a traceback"]
    assert GEMINI not in out and AZURE not in out
    assert lines[0]["detail"] == "key [redacted]" and "[redacted]" in lines[0]["error"]
    assert "[redacted]" in lines[1]["exception"]


# The whole pipeline -------------------------------------------------------------------


def _text_cells(db: Path) -> list[str]:
    """Every text value of every row of every table of the store."""
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        cells = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                cells += [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                          for v in row if isinstance(v, str | bytes)]
        return cells
    finally:
        conn.close()


@pytest.mark.parametrize("executor_process", [False, True], ids=["executor-on-the-loop", "executor-process"])
async def test_a_provider_error_echoing_keys_of_every_shape_leaks_nowhere(
        sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        executor_process: bool) -> None:
    import httpx

    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI)
    monkeypatch.setenv("AZURE_API_KEY", AZURE)
    monkeypatch.setenv("GROQ_API_KEY", GROQ)
    monkeypatch.setenv("HOSTED_VLLM_API_KEY", GATEWAY)
    url = sim.url  # type: ignore[attr-defined]
    models = sim_model_configs(url)
    # a configured model nobody calls here, whose base URL carries credentials
    models["openai/gpt-4o-mini"] = ModelConfig(
        api_base=f"http://gw:{URL_PASSWORD}@127.0.0.1:9/v1?api_key={QUERY_KEY}")
    db = tmp_path / "compound.db"
    settings = Settings(
        database_url=f"sqlite:///{db}", planner_model="anthropic/claude-haiku-4-5",
        tier1_models=["anthropic/claude-haiku-4-5"], tier2_models=["openai/gpt-4.1"],
        tier3_models=["anthropic/claude-opus-4-5"], models=models, openai_api_key=SecretStr(TOML_KEY),
        retry_initial_wait_s=0.0, retry_max_wait_s=0.0, call_timeout_s=10.0, rate_limit_per_minute=1000,
        executor_process=executor_process, log_json=True, max_replans=0)  # the failure stays the task's end
    echoed = " ".join(KEYS)
    sim.fail(Failure(401, model="gpt-4.1", message=f"invalid credentials; keys seen: {echoed}"))
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    plan = {"subtasks": [{"description": "answer with the tier-2 model", "tier_hint": 2, "depends_on": []}]}

    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            token = create_token(app.state.store.engine, "alice", None)[1]
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
                r = await http.post("/v1/tasks", json={"prompt": "go", "plan": plan}, headers=auth)
                assert r.status_code == 202, r.text
                task_id = r.json()["id"]
                await app.state.executor.wait(task_id, timeout=60)
                snapshot = (await http.get(f"/v1/tasks/{task_id}", headers=auth)).text
                listed = (await http.get("/v1/tasks", headers=auth)).text
                progress = (await http.get(f"/task/{task_id}/progress", headers=auth)).text
                async with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=auth) as resp:
                    stream = "".join([chunk async for chunk in resp.aiter_text()])
    finally:
        structlog.reset_defaults()
    logs = buf.getvalue() + capfd.readouterr().err  # the executor process writes to the inherited stderr
    cells = _text_cells(db)

    # The error did travel every path, redacted ...
    body = json.loads(snapshot)
    assert body["status"] == "failed" and "invalid credentials" in body["subtasks"][0]["error"]
    assert "[redacted]" in body["subtasks"][0]["error"] and "[redacted]" in body["error"]
    assert "[redacted]" in json.loads(progress)["error"]
    assert "invalid credentials" in stream and "[redacted]" in stream
    assert any("invalid credentials" in c for c in cells)
    assert "invalid credentials" in logs and "[redacted]" in logs  # the task's failure was logged
    # ... and no key, of any shape, is left anywhere.
    for key in KEYS:
        for where, text in (("snapshot", snapshot), ("list", listed), ("progress", progress), ("SSE", stream),
                            ("logs", logs)):
            assert key not in text, f"{key!r} leaked in the {where}"
        leaked = [c for c in cells if key in c]
        assert not leaked, f"{key!r} leaked in the store: {leaked[:2]}"


def test_standard_library_log_lines_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored afterwards
    monkeypatch.setenv("GROQ_API_KEY", GROQ)
    secrets.configure()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("a.provider.sdk")
    logger.addHandler(handler)
    try:
        logger.warning("request failed with key %s", GROQ)
        try:
            raise ValueError(f"bad key {GROQ}")
        except ValueError:
            logger.exception("and a traceback")
    finally:
        logger.removeHandler(handler)
    out = buf.getvalue()
    assert GROQ not in out
    assert "request failed with key [redacted]" in out and "ValueError: bad key [redacted]" in out


def test_log_record_arguments_keep_their_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())
    secrets.configure(environ={"AZURE_API_KEY": AZURE})
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/x?k={AZURE}", "1.1", 200), None)
    assert isinstance(record.args, tuple) and record.args[4] == 200  # a formatter can still unpack them
    assert record.getMessage() == '127.0.0.1:5000 - "GET /x?k=[redacted] HTTP/1.1" 200'


def test_secrets_in_the_toml_file_are_redacted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from compound.core.settings import load_settings

    path = tmp_path / "compound.toml"
    path.write_text(f'''anthropic_api_key = "{TOML_KEY}"
database_url = "postgresql://app:db-pass-4417@db/compound"

[models."openai/gw"]
api_base = "https://gw:{URL_PASSWORD}@gateway.internal/v1?key={QUERY_KEY}"
input_cost_per_token = 0.0
output_cost_per_token = 0.0
''', encoding="utf-8")
    monkeypatch.setenv("COMPOUND_CONFIG", str(path))
    secrets.configure(load_settings(), environ={})
    for secret in (TOML_KEY, "db-pass-4417", URL_PASSWORD, QUERY_KEY):
        assert secrets.redact(f"<{secret}>") == "<[redacted]>", secret


# JSON views redacted ---------------------------------------------------------------

_PIECES = ["ok", "naïve ☃", 'a "quoted" \\ back\nslash', "\x00\x1f", "Sk-", "api_KEY: ", "bearer ", "://u:p@h",
           "?key=", "=", "\u212a", "\u017f", *KEYS, GATEWAY.upper(), json.dumps(ANTHROPIC)]
_TEXT = st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), max_size=5).map("".join)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | _TEXT,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
                     max_leaves=12)


@given(value=_JSON)
@hsettings(max_examples=300, deadline=None)
def test_a_json_view_is_redacted_as_each_of_its_strings_is(value: object) -> None:
    secrets.configure(environ={"ANTHROPIC_API_KEY": ANTHROPIC, "MY_GATEWAY_PASSWORD": GATEWAY,
                               "DATABASE_URL": f"postgresql://u:{URL_PASSWORD}@h/db"})
    walked = json.dumps(secrets.redact_data(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert secrets.json_redacted(value) == walked


def test_a_json_view_with_nothing_to_redact_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets.configure(environ={"ANTHROPIC_API_KEY": ANTHROPIC})
    clean = {"status": "running", "subtasks": [{"description": "find the prices", "cost_usd": 0.25}]}

    def walked(_value: object) -> object:
        raise AssertionError("walked a view that holds nothing to redact")

    monkeypatch.setattr(secrets, "redact_data", walked)
    assert json.loads(secrets.json_redacted(clean)) == clean
    with pytest.raises(AssertionError, match="walked"):
        secrets.json_redacted({"error": f"key {ANTHROPIC} refused"})
