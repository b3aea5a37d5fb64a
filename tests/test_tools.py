"""Tools from MCP servers: the catalogue over HTTP and stdio (GET /v1/tools and
`compound tools list`), `env:` headers, servers down at start or killed and restarted,
and calls through ToolServers: echo, a failing tool, a timeout, a huge result."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from compound.api.app import create_app
from compound.cli import _register
from compound.cli import app as cli
from compound.core.errors import ToolTimedOut, ToolUnavailable, UnknownTool
from compound.core.settings import Settings
from compound.store.users import create_token
from compound.tools.catalogue import Tools
from compound.tools.config import McpServerConfig
from compound.tools.servers import ToolServers
from tests.fixtures.mcp_tools import ROOT, STDIO_COMMAND, HttpServer, http_server
from tests.fixtures.served import free_port, serving_in_thread

pytestmark = pytest.mark.slow  # starts MCP servers as child processes

SECRET = "fixture-mcp-secret-4f9a1c"  # what the HTTP fixture server demands as its bearer token
_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """One fixture server over streamable HTTP that wants `Authorization: Bearer SECRET`."""
    notes = tmp_path_factory.mktemp("web") / "notes"
    with http_server(env={"MCP_TOOLS_TOKEN": SECRET, "MCP_TOOLS_NOTES": str(notes)}) as server:
        server.notes = notes  # type: ignore[attr-defined]
        yield server


def stdio(**extra: Any) -> McpServerConfig:
    return McpServerConfig(command=STDIO_COMMAND, cwd=str(ROOT), **extra)


def authed(url: str, **extra: Any) -> McpServerConfig:
    return McpServerConfig(url=url, headers={"Authorization": "env:FIXTURE_MCP_AUTH"}, **extra)


@contextlib.asynccontextmanager
async def running(sqlite_url: str, servers: dict[str, McpServerConfig]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient,
                                                                                               dict[str, str]]]:
    app = create_app(Settings(database_url=sqlite_url, executor_process=False, mcp_servers=servers))
    async with app.router.lifespan_context(app):
        token = create_token(app.state.store.engine, "carol", ["read"])[1]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield app, http, {"Authorization": f"Bearer {token}"}


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    """Poll `check` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (got := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return got


def by_name(catalogue: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in catalogue["tools"]}


async def test_catalogue_over_http_and_stdio_applies_allow_deny_and_trust(
        web: HttpServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIXTURE_MCP_AUTH", f"Bearer {SECRET}")
    servers = {"web": authed(web.url, deny=["delete", "sleep", "crash", "pid", "brackets"], read_only=["echo"],
                             idempotent=["count"]),
               "local": stdio(allow=["echo", "count", "delete"], trusted=True)}
    async with running(sqlite_url, servers) as (_app, http, auth):
        r = await http.get("/v1/tools", headers=auth)
        assert r.status_code == 200, r.text
        tools = by_name(r.json())
        # web lists nine tools two a page (the listing follows the cursor); deny drops five
        assert sorted(tools) == ["local.count", "local.delete", "local.echo",
                                 "web.count", "web.echo", "web.fail", "web.huge"]
        assert all(t["available"] for t in tools.values())
        assert tools["web.echo"] == {"name": "web.echo", "server": "web", "description": "Echo the text back.",
                                     "arguments": ["text"], "read_only": True, "available": True}
        assert tools["web.fail"]["arguments"] == ["message"]
        # the server says huge is read-only, but web is not trusted: only its configuration counts
        assert tools["web.huge"]["read_only"] is False
        # local is trusted: its own annotations count (echo read-only; delete is destructive)
        assert tools["local.echo"]["read_only"] is True
        assert tools["local.delete"]["read_only"] is False and tools["local.count"]["read_only"] is False
        assert {s["name"]: (s["transport"], s["available"], s["tools"]) for s in r.json()["servers"]} == {
            "local": ("stdio", True, 3), "web": ("http", True, 4)}
        assert r.json()["steps"] == []  # no step kind is registered unless COMPOUND_PLUGINS names it
        assert (await http.get("/v1/tools")).status_code == 401
        spec = (await http.get("/openapi.json")).json()
        assert spec["components"]["schemas"]["ToolCatalogue"].get("examples")
        assert "/v1/tools" in spec["paths"]


async def test_env_headers_reach_the_server_and_never_show(
        web: HttpServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FIXTURE_MCP_AUTH", f"Bearer {SECRET}")
    monkeypatch.setenv("WRONG_MCP_AUTH", "Bearer wrong-secret-77c1e0")
    servers = {"web": authed(web.url, allow=["echo"]),
               "wrong": McpServerConfig(url=web.url, headers={"Authorization": "env:WRONG_MCP_AUTH"}, allow=["echo"]),
               "unset": McpServerConfig(url=web.url, headers={"Authorization": "env:NO_SUCH_MCP_VARIABLE"})}
    async with running(sqlite_url, servers) as (app, http, auth):
        body = (await http.get("/v1/tools", headers=auth)).text
        states = {s["name"]: s for s in json.loads(body)["servers"]}
        # the server answers only with the header's value read from the environment
        assert states["web"]["available"] is True
        assert states["wrong"]["available"] is False and states["wrong"]["error"]
        assert states["unset"]["available"] is False
        assert "NO_SUCH_MCP_VARIABLE" in states["unset"]["error"] and "not set" in states["unset"]["error"]
        result = await app.state.tool_servers.call("web", "echo", {"text": "through"})
        assert result.text == "through"
    monkeypatch.setenv("COMPOUND_MCP_SERVERS", json.dumps({"web": {"url": web.url, "headers": {
        "Authorization": "env:FIXTURE_MCP_AUTH", "X-Literal": "literal-secret-0b3d"}}}))
    monkeypatch.setenv("COMPOUND_DATABASE_URL", sqlite_url)
    shown = runner.invoke(cli, ["config", "show"])
    assert shown.exit_code == 0, shown.output
    headers = json.loads(shown.stdout)["mcp_servers"]["web"]["headers"]
    assert headers == {"Authorization": "env:FIXTURE_MCP_AUTH", "X-Literal": "****"}
    logs = capfd.readouterr()
    everything = body + shown.output + logs.out + logs.err + caplog.text
    for secret in (SECRET, "wrong-secret-77c1e0", "literal-secret-0b3d"):
        assert secret not in everything


async def test_server_down_at_start_is_a_warning_and_the_app_serves(
        sqlite_url: str, capfd: pytest.CaptureFixture[str]) -> None:
    down = McpServerConfig(url=f"http://127.0.0.1:{free_port()}/mcp", allow=["lookup"])
    async with running(sqlite_url, {"facts": down}) as (app, http, auth):
        assert (await http.get("/healthz")).status_code == 200
        r = await http.get("/v1/tools", headers=auth)
        assert r.status_code == 200
        assert r.json()["tools"] == [{"name": "facts.lookup", "server": "facts", "description": "", "arguments": [],
                                      "read_only": False, "available": False}]
        [state] = r.json()["servers"]
        assert state["available"] is False and "ConnectError" in state["error"]
        with pytest.raises(ToolUnavailable, match="'facts' is unavailable"):
            await app.state.tool_servers.call("facts", "lookup", {})
        assert app.state.tool_servers.tool("facts.lookup").available is False
        assert [app.state.tool_servers.tool("facts.lookup")] == app.state.tool_servers.catalogue()
    err = capfd.readouterr().err
    assert "MCP server unreachable at start" in err and "facts" in err


async def test_a_killed_server_is_reconnected(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with http_server(env={"MCP_TOOLS_TOKEN": SECRET}) as server:
        monkeypatch.setenv("FIXTURE_MCP_AUTH", f"Bearer {SECRET}")
        servers = {"web": authed(server.url, allow=["echo"], ping_interval_s=0.1)}
        async with running(sqlite_url, servers) as (app, http, auth):
            async def echo_available() -> bool:
                r = await http.get("/v1/tools", headers=auth)
                return bool(r.json()["tools"][0]["available"])

            assert await echo_available()
            server.kill()
            await until(lambda: _not(echo_available()), "the catalogue to mark web.echo unavailable")
            with pytest.raises(ToolUnavailable):
                await app.state.tool_servers.call("web", "echo", {"text": "x"})
            assert app.state.tool_servers.tool("web.echo").available is False  # as the catalogue shows it
            server.start()  # the same port again
            await until(echo_available, "web.echo to be available again")
            result = await app.state.tool_servers.call("web", "echo", {"text": "back"})
            assert (result.text, result.is_error) == ("back", False)


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


@pytest.fixture
async def tool_servers(web: HttpServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ToolServers]:
    servers = ToolServers({"web": authed(web.url, deny=["delete", "crash"]), "local": stdio(allow=["echo", "count"])},
                          environ={"FIXTURE_MCP_AUTH": f"Bearer {SECRET}"})
    await servers.start()
    yield servers
    await servers.stop()


async def test_calls_return_results_errors_and_time_out(tool_servers: ToolServers) -> None:
    echoed = await tool_servers.call("web", "echo", {"text": "hello [b]"})
    assert (echoed.tool, echoed.text, echoed.is_error) == ("web.echo", "hello [b]", False)
    assert (await tool_servers.call("local", "echo", {"text": "over stdio"})).text == "over stdio"
    failed = await tool_servers.call("web", "fail", {"message": "the disk is full"})
    assert failed.is_error and "the disk is full" in failed.text
    refused = await tool_servers.call("web", "echo", {})  # a required argument missing: the server says why
    assert refused.is_error and "text" in refused.text
    huge = await tool_servers.call("web", "huge", {"chars": 150_000})
    assert len(huge.text) == 150_000 and not huge.is_error
    counts = [(await tool_servers.call("local", "count")).text for _ in range(3)]
    assert counts == ["1", "2", "3"]
    started = time.monotonic()
    with pytest.raises(ToolTimedOut) as timed_out:
        await tool_servers.call("web", "sleep", {"seconds": 30}, timeout_s=0.5)
    assert timed_out.value.tool == "web.sleep" and timed_out.value.timeout_s == 0.5
    assert time.monotonic() - started < 20  # cancelled, not waited out
    # the session is still good after a timeout, and calls run side by side
    slow = asyncio.ensure_future(tool_servers.call("web", "sleep", {"seconds": 0.5}))
    assert (await tool_servers.call("web", "echo", {"text": "meanwhile"})).text == "meanwhile"
    assert not slow.done() or (await slow).text == "slept 0.5"
    assert (await slow).text == "slept 0.5"
    with pytest.raises(UnknownTool):
        await tool_servers.call("web", "delete", {"item": "a"})  # denied
    with pytest.raises(UnknownTool):
        await tool_servers.call("nowhere", "echo", {})
    with pytest.raises(UnknownTool, match="known: "):
        tool_servers.tool("local.sleep")  # not allowed
    assert tool_servers.tool("local.count").idempotent is False
    assert [tool_servers.tool(t.name) for t in tool_servers.catalogue()] == tool_servers.catalogue()


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_cancelled_call_is_cancelled_on_the_server(web: HttpServer, tmp_path: Path, transport: str) -> None:
    notes: Path = web.notes if transport == "http" else tmp_path / "notes"  # type: ignore[attr-defined]
    config = authed(web.url) if transport == "http" else stdio(env={"MCP_TOOLS_NOTES": str(notes)})
    servers = ToolServers({"s": config}, environ={"FIXTURE_MCP_AUTH": f"Bearer {SECRET}"})
    await servers.start()

    def count(what: str) -> int:
        return notes.read_text().count(what) if notes.exists() else 0

    async def more(what: str, than: int) -> bool:
        return count(what) > than

    try:
        started, cancelled = count("sleep started"), count("sleep cancelled")
        call = asyncio.ensure_future(servers.call("s", "sleep", {"seconds": 60}))
        await until(lambda: more("sleep started", started), "the tool to start")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await until(lambda: more("sleep cancelled", cancelled), "the server to cancel the tool")
        with pytest.raises(ToolTimedOut):  # a timeout cancels it the same way (3 s: time for it to start)
            await servers.call("s", "sleep", {"seconds": 60}, timeout_s=3)
        assert count("sleep started") == started + 2
        await until(lambda: more("sleep cancelled", cancelled + 1), "the server to cancel the tool again")
        assert (await servers.call("s", "echo", {"text": "still here"})).text == "still here"
    finally:
        await servers.stop()


async def test_a_stdio_server_that_exits_is_started_again() -> None:
    servers = ToolServers({"local": stdio(allow=["count", "crash"])}, backoff_initial_s=0.05)
    await servers.start()
    try:
        assert [(await servers.call("local", "count")).text for _ in range(2)] == ["1", "2"]
        with pytest.raises(ToolUnavailable, match=r"lost during the call of local\.crash"):
            await servers.call("local", "crash")

        async def up() -> bool:
            return servers.states()[0].available

        await until(up, "a new server process")
        assert (await servers.call("local", "count")).text == "1"  # a new process counts from one
    finally:
        await servers.stop()


async def test_a_server_silent_past_its_connect_timeout_is_ended_and_started_again(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    silent = [*STDIO_COMMAND[:1], "-c", "import os, sys, time\n"
              "with open(sys.argv[1], 'a') as f: f.write(f'{os.getpid()}\\n')\ntime.sleep(600)", str(pids)]
    servers = ToolServers({"mute": McpServerConfig(command=silent, connect_timeout_s=0.5)}, backoff_initial_s=0.05)
    began = time.monotonic()
    await servers.start()
    try:
        assert time.monotonic() - began < 30  # start waited for the first attempt only
        state = servers.states()[0]
        assert not state.available and state.error == "TimeoutError: no answer within 0.5 s"

        async def started(n: int) -> list[int]:
            got = [int(p) for p in pids.read_text().split()] if pids.exists() else []
            return got if len(got) >= n else []

        first = (await until(lambda: started(2), "a second process"))[0]  # tried again after the backoff

        async def ended(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        await until(lambda: ended(first), "the silent process to be ended")
        with pytest.raises(ToolUnavailable, match=r"no answer within 0\.5 s"):
            await servers.call("mute", "anything")
    finally:
        await servers.stop()
    for pid in [int(p) for p in pids.read_text().split()]:
        await until(functools.partial(ended, pid), f"process {pid} to be ended")


async def test_a_call_from_another_event_loop_is_handed_to_the_owner(tool_servers: ToolServers) -> None:
    got: list[str] = []

    def elsewhere() -> None:
        got.append(asyncio.run(tool_servers.call("local", "echo", {"text": "from a thread"})).text)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    await until(lambda: _done(thread), "the thread's call")
    assert got == ["from a thread"]


async def _done(thread: threading.Thread) -> bool:
    return not thread.is_alive()


async def test_stop_closes_every_session(web: HttpServer) -> None:
    servers = ToolServers({"web": authed(web.url), "local": stdio()}, environ={"FIXTURE_MCP_AUTH": f"Bearer {SECRET}"})
    await servers.start()
    assert [s.available for s in servers.states()] == [True, True]
    pid = int((await servers.call("local", "pid")).text)
    await servers.stop()
    assert [s.available for s in servers.states()] == [False, False]
    with pytest.raises(ProcessLookupError):  # the stdio server's process has ended and been reaped
        os.kill(pid, 0)
    with pytest.raises(ToolUnavailable):
        await servers.call("web", "echo", {"text": "x"})


async def test_no_servers_configured_start_nothing() -> None:
    servers: Tools = ToolServers({})
    assert isinstance(servers, ToolServers)
    await servers.start()
    assert servers.catalogue() == [] and servers.states() == []
    await servers.stop()


@pytest.fixture
def served_app(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The app, with a stdio server and one that is down, served by uvicorn in a thread."""
    servers = {"local": stdio(allow=["echo", "count", "brackets"], read_only=["echo"]),
               "gone": McpServerConfig(url=f"http://127.0.0.1:{free_port()}/mcp", allow=["lookup"])}
    app = create_app(Settings(database_url=sqlite_url, executor_process=False, mcp_servers=servers,
                              plugins=["word_count"]))  # the example package's step kind
    with serving_in_thread(app, start_timeout_s=120) as url:
        monkeypatch.setenv("COMPOUND_URL", url)
        monkeypatch.setenv("COMPOUND_TOKEN", create_token(app.state.store.engine, "dana", ["read"])[1])
        monkeypatch.setenv("COLUMNS", "200")
        yield url


def test_tools_list_prints_the_table(served_app: str) -> None:
    out = runner.invoke(cli, ["tools", "list"])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    assert rows["local.echo"][:4] == ["local.echo", "yes", "yes", "text"]
    assert rows["local.count"][:3] == ["local.count", "no", "yes"]
    assert rows["gone.lookup"][:3] == ["gone.lookup", "no", "no"]
    assert "Echo the text back." in out.stdout
    assert "[bold]Not bold[/bold], [red]not red, a[i] and [x](y) as written." in out.stdout  # never markup
    assert "gone: unavailable (ConnectError" in out.stdout
    # the registered step kinds follow, as the planner sees them
    assert rows["word_count"][:3] == ["word_count", "text,", "label"]
    assert out.stdout.index("gone: unavailable") < out.stdout.index("step kind")
    as_json = json.loads(runner.invoke(cli, ["tools", "list", "--json"]).stdout)
    [step] = as_json["steps"]
    assert step["name"] == "word_count" and step["arguments"] == ["text", "label"]
    assert step["arguments_schema"]["properties"]["text"] == {"type": "string"}
    assert [t["name"] for t in as_json["tools"]] == ["gone.lookup", "local.brackets", "local.count", "local.echo"]
