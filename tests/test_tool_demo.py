"""The tour's MCP server (`compound tools demo-server`): started as the tour starts it,
its tools listed with their annotations and called with the MCP client, and read by
compound's own ToolServers as a trusted server."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, get_args

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from compound.tools.config import McpServerConfig
from compound.tools.demo import FACTS, Topic, bind
from compound.tools.servers import ToolServers, content_text
from tests.fixtures.mcp_tools import ROOT


@contextlib.contextmanager
def demo_server(port: int = 0) -> Iterator[str]:
    """`compound tools demo-server` in a child process; its URL once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "compound.cli", "tools", "demo-server", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed once the socket listens
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp"), url
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with demo_server() as url:
        yield url


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=None)) as http, \
            Client(streamable_http_client(url, http_client=http), cache=None) as c:
        yield c


async def call(c: Client, tool: str, arguments: dict[str, Any]) -> tuple[str, bool]:
    result = await c.call_tool(tool, arguments)
    return content_text(result), bool(result.is_error)


def test_every_topic_has_a_fact() -> None:
    assert set(get_args(Topic)) == set(FACTS)


async def test_tools_declare_their_annotations(demo_url: str) -> None:
    async with client(demo_url) as c:
        listed = {t.name: t for t in (await c.list_tools()).tools}
    assert set(listed) == {"lookup", "note", "notes"}
    hints = {name: (t.annotations.read_only_hint, t.annotations.idempotent_hint)
             for name, t in listed.items() if t.annotations is not None}
    assert hints == {"lookup": (True, True), "note": (False, False), "notes": (True, True)}
    topic = listed["lookup"].input_schema["properties"]["topic"]
    assert topic["enum"] == list(get_args(Topic)) and listed["lookup"].input_schema["required"] == ["topic"]


async def test_lookup_answers_from_the_table_and_refuses_an_unknown_topic(demo_url: str) -> None:
    async with client(demo_url) as c:
        assert await call(c, "lookup", {"topic": "anthropic"}) == (FACTS["anthropic"], False)
        text, is_error = await call(c, "lookup", {"topic": "mongodb"})
    assert is_error and "topic" in text


async def test_note_counts_and_notes_reads_back(demo_url: str) -> None:
    async with client(demo_url) as c:
        first, _ = await call(c, "note", {"text": "check the status page"})
        second, _ = await call(c, "note", {"text": "then the logs"})
        kept, is_error = await call(c, "notes", {})
    assert int(second) == int(first) + 1
    assert not is_error and kept.splitlines()[-2:] == ["check the status page", "then the logs"]


async def test_compound_reads_it_as_a_trusted_server(demo_url: str) -> None:
    servers = ToolServers({"demo": McpServerConfig(url=demo_url, trusted=True)})
    await servers.start()
    try:
        tools = {t.name: t for t in servers.catalogue()}
        assert {n: t.read_only for n, t in tools.items()} == {
            "demo.lookup": True, "demo.note": False, "demo.notes": True}
        assert all(t.available for t in tools.values())
        result = await servers.call("demo", "lookup", {"topic": "sqlite"})
        assert (result.text, result.is_error) == (FACTS["sqlite"], False)
    finally:
        await servers.stop()


def test_a_port_in_use_is_a_clear_error() -> None:
    with contextlib.closing(bind(0)) as taken:
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "compound.cli", "tools", "demo-server", "--port", str(port)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
