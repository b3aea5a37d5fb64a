"""Subtasks that act, against the fixture MCP server (tests/fixtures/mcp_tools.py) and
through the public API: a plan naming tools runs its loop, a hanging tool times out and
is cancelled on the server, a direct call carries its idempotency key in `_meta`, and an
executor process killed with SIGKILL between a call's intent and its result never runs
the call again (its tool is not idempotent) while the finished call is replayed."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compound.api.app import create_app
from compound.api.schemas import TaskOut
from compound.core.settings import Settings
from compound.executor.steps import IN_DOUBT
from compound.llm.base import Completion, Message, ToolChoice
from compound.store.base import RunStore
from compound.store.users import create_token
from compound.tools.config import McpServerConfig
from tests.fixtures.mcp_tools import HttpServer, http_server
from tests.test_process import running, until
from tests.test_tool_loop import ScriptedLLM, asks, tool_messages


@pytest.fixture
def fixture_server(tmp_path: Path) -> Iterator[HttpServer]:
    env = {"MCP_TOOLS_COUNT_FILE": str(tmp_path / "count"), "MCP_TOOLS_NOTES": str(tmp_path / "notes")}
    with http_server(env=env) as server:
        yield server


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


class Served:
    def __init__(self, app: Any, http: httpx.AsyncClient, token: str) -> None:
        self.app, self.http, self.auth = app, http, {"Authorization": f"Bearer {token}"}

    async def run(self, plan: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post("/v1/tasks", json={"prompt": "check the providers", "plan": plan},
                                 headers=self.auth)
        assert r.status_code == 202, r.text
        await self.app.state.executor.wait(r.json()["id"], timeout=60)
        snap = await self.http.get(f"/v1/tasks/{r.json()['id']}", headers=self.auth)
        got: dict[str, Any] = snap.json()
        return got


@contextlib.asynccontextmanager
async def serve(sqlite_url: str, llm: ScriptedLLM, server: HttpServer, **config: Any) -> AsyncIterator[Served]:
    settings = Settings(database_url=sqlite_url, executor_process=False, rate_limit_per_minute=1000,
                        mcp_servers={"fx": McpServerConfig(url=server.url, **{"approval": "never", **config})})
    app = create_app(settings, client=llm)
    async with app.router.lifespan_context(app):
        token = create_token(app.state.store.engine, "alice", None)[1]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield Served(app, http, token)


async def test_a_plan_naming_tools_runs_its_loop_and_a_hanging_tool_times_out(
        sqlite_url: str, fixture_server: HttpServer, tmp_path: Path) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        if not done:
            return asks(("fx.echo", {"text": "all providers up"}), ("fx.sleep", {"seconds": 600}))
        return " / ".join(f"{m['content']}" for m in done)

    async with serve(sqlite_url, ScriptedLLM(script), fixture_server, timeout_s=1) as api:
        snap = await api.run({"subtasks": [{"description": "check", "tools": ["fx.echo", "fx.sleep"]}]})
        assert snap["status"] == "completed", snap
        sub = snap["subtasks"][0]
        assert [(c["tool"], c["status"]) for c in sub["tool_calls"]] == [("fx.echo", "ok"), ("fx.sleep", "timeout")]
        assert sub["tool_calls"][0]["result"] == "all providers up"
        assert TaskOut.model_validate(snap).model_dump(mode="json") == snap  # the documented shape, all of it
        assert sub["result"].startswith("all providers up / fx.sleep gave no result within 1 s")
        # the hanging call was cancelled on the server too
        await until(lambda: "sleep cancelled" in lines(tmp_path / "notes"), "the server's sleep cancelled")
        # every tool call is an event on the task's stream
        r = await api.http.get(f"/v1/tasks/{snap['id']}/events", headers=api.auth)
        assert r.status_code == 200 and r.text.count("event: tool_call") == 4


async def test_a_direct_call_sends_its_idempotency_key_in_meta(
        sqlite_url: str, fixture_server: HttpServer, tmp_path: Path) -> None:
    llm = ScriptedLLM(lambda _m, _c: "unused")
    async with serve(sqlite_url, llm, fixture_server) as api:
        snap = await api.run({"subtasks": [{"description": "bump", "kind": "tool", "tool": "fx.count"}]})
        assert snap["status"] == "completed" and snap["result"] == "1", snap
        call = snap["subtasks"][0]["tool_calls"][0]
        assert lines(tmp_path / "count") == [f"call {call['id']}"]
        assert llm.turns == []  # no model: a plan of one direct call is its own answer


async def test_a_kill_between_intent_and_result_never_runs_the_call_twice(
        store: RunStore, sim_settings: Settings, fixture_server: HttpServer, tmp_path: Path) -> None:
    settings = sim_settings.model_copy(update={"mcp_servers": {"fx": McpServerConfig(url=fixture_server.url, approval="never")},
                                                "max_replans": 0})
    plan = {"subtasks": [{"description": "bump the counter", "kind": "tool", "tool": "fx.count"},
                         {"description": "wait for the page", "kind": "tool", "tool": "fx.sleep",
                          "arguments": {"seconds": 600}, "depends_on": [0]}]}
    async with running(store, settings) as executor:
        task = await store.create_task(prompt="bump and wait", budget_usd=1.0, plan_in=plan)
        await executor.dispatch(task.id, priority=2)
        await until(lambda: "sleep started" in lines(tmp_path / "notes"), "the sleep call in flight", timeout=60)
        assert executor.proc is not None
        first = executor.proc.pid
        os.kill(first, signal.SIGKILL)
        await until(lambda: executor.starts == 2 and executor.proc is not None, "another child", timeout=60)
        assert await executor.wait(task.id, timeout=60) == "partial"
    snap = await store.snapshot(task.id)
    count, wait = snap["subtasks"]
    # the finished call was replayed from the record: the counter ran exactly once
    assert lines(tmp_path / "count") == [f"call {count['tool_calls'][0]['id']}"]
    assert count["status"] == "completed" and count["result"] == "1"
    # the call in flight was not sent again (sleep is not idempotent): shown unknown
    assert lines(tmp_path / "notes").count("sleep started") == 1
    assert [c["status"] for c in wait["tool_calls"]] == ["unknown"]
    assert wait["status"] == "failed" and IN_DOUBT in wait["error"]
