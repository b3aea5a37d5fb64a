"""MCP server configuration (`[mcp_servers.NAME]`, COMPOUND_MCP_SERVERS) and the pure
rules of the catalogue: one-line descriptions, argument names, read-only and approval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from compound.cli import _register
from compound.cli import app as cli
from compound.core.errors import ConfigError
from compound.core.settings import load_settings
from compound.tools.catalogue import argument_names, make_tool, one_line
from compound.tools.config import McpServerConfig

_register()
runner = CliRunner()

TOML = """
[mcp_servers.facts]
url = "http://127.0.0.1:9100/mcp"
headers = { Authorization = "env:FACTS_TOKEN" }
allow = ["lookup", "bump"]
timeout_s = 5
approval = "always"
read_only = ["lookup"]
idempotent = ["lookup"]
trusted = true

[mcp_servers.local]
command = ["python", "-m", "my_server"]
env = { MY_KEY = "env:MY_KEY", MODE = "test" }
"""


def test_toml_tables_are_read_with_their_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "compound.toml"
    path.write_text(TOML)
    monkeypatch.setenv("COMPOUND_CONFIG", str(path))
    servers = load_settings().mcp_servers
    facts, local = servers["facts"], servers["local"]
    assert (facts.transport, facts.url, facts.allow, facts.deny, facts.timeout_s, facts.approval, facts.trusted) == (
        "http", "http://127.0.0.1:9100/mcp", ["lookup", "bump"], None, 5.0, "always", True)
    assert facts.headers == {"Authorization": "env:FACTS_TOKEN"}
    assert (local.transport, local.command, local.timeout_s, local.approval, local.read_only, local.trusted,
            local.ping_interval_s, local.connect_timeout_s) == ("stdio", ["python", "-m", "my_server"], 60.0,
                                                                "unless_read_only", [], False, 30.0, 30.0)


def test_the_environment_carries_the_same_table_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps({"facts": {"url": "https://facts.example/mcp",
                                                                     "deny": ["drop"]}}))
    facts = load_settings().mcp_servers["facts"]
    assert facts.allows("lookup") and not facts.allows("drop")
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", "{not json")
    with pytest.raises(ConfigError, match="mcp_servers"):
        load_settings()


def test_the_environment_is_merged_into_the_file_field_by_field(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "compound.toml"
    path.write_text(TOML)
    monkeypatch.setenv("COMPOUND_CONFIG", str(path))
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps({"facts": {"timeout_s": 2},
                                                           "more": {"url": "http://more/mcp"}}))
    servers = load_settings().mcp_servers
    assert sorted(servers) == ["facts", "local", "more"]
    assert (servers["facts"].timeout_s, servers["facts"].allow) == (2.0, ["lookup", "bump"])


@pytest.mark.parametrize(("server", "expected"), [
    ({"url": "http://h/mcp", "command": ["x"]}, ["mcp_servers.facts:", "not both"]),
    ({}, ["mcp_servers.facts:", "neither is set"]),
    ({"command": ["x"], "allow": ["a"], "deny": ["b"]}, ["mcp_servers.facts:", "allow or deny, not both"]),
    ({"url": "http://h/mcp", "approval": "sometimes"}, ["mcp_servers.facts.approval:", "'unless_read_only'"]),
    ({"command": "python -m srv"}, ["mcp_servers.facts.command:", "list of words", "'python -m srv'"]),
    ({"command": []}, ["mcp_servers.facts.command:", "must name a program"]),
    ({"url": "ftp://h/mcp"}, ["mcp_servers.facts.url:", "'ftp://h/mcp'"]),
    ({"url": "http://h/mcp", "alow": ["a"]}, ["mcp_servers.facts.alow:", "Extra inputs"]),
    ({"url": "http://h/mcp", "timeout_s": 0}, ["mcp_servers.facts.timeout_s:", "greater than 0"]),
    ({"command": ["x"], "headers": {"A": "b"}}, ["mcp_servers.facts:", "headers apply to a url server"]),
    ({"url": "http://h/mcp", "env": {"A": "b"}}, ["mcp_servers.facts:", "env and cwd apply to a command"]),
    ({"url": "http://h/mcp", "headers": {"Authorization": "env:"}}, ["headers.Authorization: 'env:' must be"]),
])
def test_bad_server_config_names_the_server_and_the_field(monkeypatch: pytest.MonkeyPatch,
                                                          server: dict[str, Any], expected: list[str]) -> None:
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps({"facts": server}))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    for words in expected:
        assert words in caught.value.message, caught.value.message


def test_a_server_name_with_a_dot_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps({"fa.cts": {"url": "http://h/mcp"}}))
    with pytest.raises(ConfigError, match=r"its tools are named server\.tool\), not 'fa\.cts'"):
        load_settings()


def test_bad_config_stops_the_cli_with_the_reason(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("COMPOUND_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps({"facts": {"url": "http://h/mcp", "command": ["x"]}}))
    out = runner.invoke(cli, ["config", "show"])
    assert out.exit_code == 2 and "mcp_servers.facts" in out.output and "not both" in out.output


def test_config_show_masks_header_and_env_values(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("COMPOUND_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FACTS_TOKEN", "Bearer resolved-secret-91ab")
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps({
        "facts": {"url": "https://user:pw-in-url-55@facts.example/mcp",
                  "headers": {"Authorization": "env:FACTS_TOKEN", "X-Api-Key": "literal-key-12345"}},
        "local": {"command": ["srv"], "env": {"KEY": "literal-env-secret-6789", "REF": "env:FACTS_TOKEN"}}}))
    out = runner.invoke(cli, ["config", "show"])
    assert out.exit_code == 0, out.output
    servers = json.loads(out.stdout)["mcp_servers"]
    assert servers["facts"]["headers"] == {"Authorization": "env:FACTS_TOKEN", "X-Api-Key": "****"}
    assert servers["facts"]["url"] == "https://user:****@facts.example/mcp"
    assert servers["local"]["env"] == {"KEY": "****", "REF": "env:FACTS_TOKEN"}
    for secret in ("resolved-secret-91ab", "literal-key-12345", "pw-in-url-55", "literal-env-secret-6789"):
        assert secret not in out.output


def test_env_references_are_read_when_connecting() -> None:
    config = McpServerConfig(url="http://h/mcp", headers={"Authorization": "env:TOKEN", "X-Client": "compound"})
    assert config.resolved_headers({"TOKEN": "Bearer t-1"}) == {"Authorization": "Bearer t-1", "X-Client": "compound"}
    with pytest.raises(ConfigError, match=r"headers\.Authorization reads the environment variable TOKEN, which is not"):
        config.resolved_headers({})


@pytest.mark.parametrize(("text", "expected"), [
    (None, ""),
    ("", ""),
    ("One line.", "One line."),
    ("\n\n  First real line.  \nSecond line.", "First real line."),
    ("word " * 100, ("word " * 39).strip() + "…"),  # 199 characters, cut at a word
])
def test_one_line(text: str | None, expected: str) -> None:
    assert one_line(text) == expected
    assert len(one_line(text)) <= 200


@pytest.mark.parametrize(("schema", "expected"), [
    (None, ()),
    ({"type": "object"}, ()),
    ({"properties": {"a": {}, "b": {}, "c": {}}, "required": ["c"]}, ("c", "a", "b")),
    ({"properties": {"a": {}}, "required": ["a", "ghost"]}, ("a",)),
    ({"properties": ["not", "a", "mapping"]}, ()),
])
def test_argument_names(schema: dict[str, Any] | None, expected: tuple[str, ...]) -> None:
    assert argument_names(schema) == expected


@pytest.mark.parametrize(("config", "hints", "read_only", "idempotent"), [
    ({}, (None, None), False, False),
    ({}, (True, True), False, False),  # an untrusted server's hints do not count
    ({"trusted": True}, (True, None), True, True),  # read-only tools are idempotent too
    ({"trusted": True}, (False, True), False, True),
    ({"read_only": ["t"]}, (False, False), True, True),  # the configuration wins over the server
    ({"idempotent": ["t"]}, (None, None), False, True),
])
def test_read_only_and_idempotent(config: dict[str, Any], hints: tuple[bool | None, bool | None],
                                  read_only: bool, idempotent: bool) -> None:
    tool = make_tool("s", McpServerConfig(url="http://h/mcp", **config), tool="t", description="d",
                     input_schema=None, read_only_hint=hints[0], idempotent_hint=hints[1])
    assert (tool.name, tool.read_only, tool.idempotent) == ("s.t", read_only, idempotent)


@pytest.mark.parametrize(("approval", "read_only", "needed"), [
    ("never", False, False), ("never", True, False),
    ("always", False, True), ("always", True, True),
    ("unless_read_only", False, True), ("unless_read_only", True, False),
])
def test_needs_approval(approval: str, read_only: bool, needed: bool) -> None:
    config = McpServerConfig(url="http://h/mcp", approval=approval)
    assert config.needs_approval(read_only=read_only) is needed
