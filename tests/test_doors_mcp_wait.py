"""MCP over HTTP keeps a waiting client: docs/doors.md's client script, run as written
(its URL, token and a read timeout shorter than the task put in), against the served app
while the task's subtask is held at the simulator."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from compound.api.doors import mcp as mcp_door
from compound.simulator import Simulator
from tests.fixtures.served import Served

DOCS = Path(__file__).resolve().parent.parent / "docs" / "doors.md"
READ_TIMEOUT_S = 3.0  # keep-alives every 0.3 s: ten chances before it, on a loaded machine too
PROMPT = "Compare SQLite and PostgreSQL"  # the prompt the documented script submits


def documented_script() -> str:
    """The Python block of docs/doors.md that talks MCP over HTTP."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    block: str = next(b for b in blocks if "streamable_http_client(" in b)
    return block


def runnable(script: str, url: str, token: str, mode: str = "auto") -> dict[str, Any]:
    """The script's definitions, pointed at `url` with `token` and a short read timeout
    (the `asyncio.run(main())` line left out: the test awaits main() in its own loop);
    `mode="legacy"` makes its Client use the initialize handshake (the SDK's other
    transport) instead of the default."""
    assert script.count("http://127.0.0.1:8000/mcp") == 1 and script.count("cpd_...") == 1
    assert "httpx2.AsyncClient(headers=" in script and script.rstrip().endswith("asyncio.run(main())")
    assert script.count("http_client=http)) as client") == 1
    source = (script.replace("http://127.0.0.1:8000/mcp", url + "/mcp").replace("cpd_...", token)
              .replace("httpx2.AsyncClient(headers=", f"httpx2.AsyncClient(timeout={READ_TIMEOUT_S}, headers=")
              .replace("http_client=http)) as client", f"http_client=http), mode={mode!r}) as client")
              .rstrip().removesuffix("asyncio.run(main())"))
    namespace: dict[str, Any] = {"__name__": "documented"}
    exec(compile(source, str(DOCS), "exec"), namespace)
    return namespace


def keepalive(served: Served) -> mcp_door.KeepAlive | None:
    handler = served.app.state.mcp_endpoint.handler
    app: mcp_door.KeepAlive | None = None if handler is None else handler.app
    return app


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_documented_client_outwaits_its_read_timeout(served: Served, sim: Simulator,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str],
                                                               mode: str) -> None:
    monkeypatch.setattr(mcp_door, "KEEPALIVE_S", READ_TIMEOUT_S / 10)
    release = threading.Event()
    sim.script.holds["Work out:"] = release  # the subtask's call (and the synthesis after it) waits
    main = runnable(documented_script(), served.url, served.alice, mode)["main"]
    running = asyncio.ensure_future(main())
    try:
        await served.wait_for(lambda: sim.calls("worker") or running.done(), "the subtask held at the provider")
        assert not running.done(), running.exception()
        # the client has now been waiting on a quiet stream for more than its read timeout
        await served.wait_for(lambda: ((k := keepalive(served)) is not None and k.sent >= 16) or running.done(),
                              "keep-alives past the client's read timeout")
        assert not running.done(), running.exception()
    finally:
        release.set()
    await asyncio.wait_for(running, 60)
    printed = capsys.readouterr().out
    assert printed.startswith("completed ") and "Final answer built from" in printed


async def test_without_keepalives_the_same_client_times_out(served: Served, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The premise of the test above: the script's client does give up on a quiet stream."""
    monkeypatch.setattr(mcp_door, "KEEPALIVE_S", 3600.0)
    release = threading.Event()
    sim.script.holds["Work out:"] = release
    main = runnable(documented_script(), served.url, served.alice)["main"]
    try:
        with pytest.raises(BaseException) as exc:
            await asyncio.wait_for(main(), 60)
        assert "timed out" in repr(exc.value).lower() or "timeout" in repr(exc.value).lower() \
            or "ended without a response" in repr(exc.value).lower(), repr(exc.value)
    finally:
        release.set()


class FollowFails:
    """Tasks whose submit works and whose events fail midway (the server behind
    `compound mcp --url` refusing to stream them, say)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    async def may_read(self) -> None:
        return None

    async def submit(self, **_: Any) -> dict[str, Any]:
        self.submitted.append("t_made")
        return {"id": "t_made", "status": "queued"}

    async def events(self, task_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        from mcp.server.mcpserver.exceptions import ToolError

        yield "task", {"status": "planning"}
        raise ToolError(f"forbidden: HTTP 403 reading the events of {task_id}")


async def test_a_task_that_was_created_is_named_when_waiting_for_it_fails() -> None:
    from mcp.client import Client

    tasks = FollowFails()
    server = mcp_door.build_server(lambda _ctx: tasks)  # type: ignore[arg-type,return-value]
    async with Client(server) as client:
        result = await client.call_tool("submit_task", {"prompt": "hi", "wait": True})
    assert result.is_error and tasks.submitted == ["t_made"]
    text = result.content[0].text  # type: ignore[union-attr]
    assert "forbidden: HTTP 403" in text and "task t_made was created" in text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_progress_reaches_a_client_that_asks_for_it(served: Served, mode: str) -> None:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {served.alice}"}, timeout=60) as http, \
            Client(streamable_http_client(served.url + "/mcp", http_client=http), mode=mode) as client:
        done = await client.call_tool("submit_task", {"prompt": "Compare SQLite and PostgreSQL for a small team "
                                                      "and recommend one", "wait": True},
                                      progress_callback=on_progress)
    snap = done.structured_content
    assert not done.is_error and snap is not None and snap["status"] == "completed"
    n = len(snap["subtasks"])
    finished = [p for p in reports if p[2] and p[2].startswith("subtask")]
    assert n > 1 and len(finished) == n and finished[-1][:2] == (n, n)
