"""The MCP door, driven by the mcp client session over streamable HTTP (the served app)
and over stdio (`compound mcp` subprocesses), with the simulator behind."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from compound.core.settings import Settings
from compound.simulator import Simulator
from tests.fixtures.served import Served

PROMPT = "Compare SQLite and PostgreSQL for a small team and recommend one"
ONE_STEP = "Explain quicksort"  # the simulator plans it as one subtask
PLAN = {"reasoning": "two facts, then a comparison", "subtasks": [
    {"description": "Facts on SQLite", "tier_hint": 1, "depends_on": []},
    {"description": "Facts on PostgreSQL", "tier_hint": 1, "depends_on": []},
    {"description": "Compare them", "tier_hint": 2, "depends_on": [0, 1]}]}
TOOLS = {"submit_task", "get_task", "list_tasks", "cancel_task", "approve_task", "approve_tool_call", "deny_tool_call",
         "validate_plan", "estimate_cost"}


@asynccontextmanager
async def mcp_http(served: Served, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http, \
            streamable_http_client(served.url + "/mcp", http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, args, **kw)
    assert not result.is_error, result.content
    out: dict[str, Any] = result.structured_content or json.loads(result.content[0].text)
    return out


async def error_of(session: ClientSession, tool: str, args: dict[str, Any]) -> str:
    """The tool error's text after the SDK's "Error executing tool NAME: " prefix."""
    result = await session.call_tool(tool, args)
    assert result.is_error
    text: str = result.content[0].text  # type: ignore[union-attr]
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    return text[len(prefix):]


async def test_tools_over_http_submit_wait_with_progress(served: Served) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    async with mcp_http(served, served.alice) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert names >= TOOLS
        done = await call(session, "submit_task", {"prompt": PROMPT, "wait": True, "budget_usd": 0.5},
                          progress_callback=on_progress)
        assert done["status"] == "completed" and done["result"].startswith("Final answer built from")
        n = len(done["subtasks"])
        finished = [p for p in progress if p[2] and p[2].startswith("subtask")]
        assert len(finished) == n and finished[-1][:2] == (n, n)
        got = await call(session, "get_task", {"task_id": done["id"]})
        assert got["total_cost_usd"] == done["total_cost_usd"] > 0
        listed = await call(session, "list_tasks", {})
        assert [t["id"] for t in listed["tasks"]] == [done["id"]]


async def test_plans_approval_and_estimates(served: Served) -> None:
    async with mcp_http(served, served.alice) as session:
        checked = await call(session, "validate_plan", {"plan": PLAN})
        assert checked["valid"] and checked["waves"] == [[0, 1], [2]]
        bad = await call(session, "validate_plan", {"plan": {"subtasks": [{"description": "a", "depends_on": [0]}]}})
        assert not bad["valid"] and bad["errors"]
        cost = await call(session, "estimate_cost", {"plan": PLAN})
        assert cost["estimated_cost_usd"] == checked["estimated_cost_usd"] > 0
        held = await call(session, "submit_task", {"prompt": "run my plan", "plan": PLAN, "approve": False})
        await served.wait_for(lambda: _is(served, held["id"], "planned"),
                              "the task planned")
        await call(session, "approve_task", {"task_id": held["id"]})
        await served.wait(held["id"])
        assert (await call(session, "get_task", {"task_id": held["id"]}))["status"] == "completed"
        assert (await error_of(session, "approve_task", {"task_id": held["id"]})).startswith("conflict:")


async def _is(served: Served, task_id: str, status: str) -> bool:
    return bool((await served.app.state.store.head(task_id)).status == status)


@pytest.mark.parametrize("token", [None, "cpd_wrong"])
async def test_http_refuses_a_missing_or_wrong_token(served: Served, token: str | None) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = await http.post("/mcp", headers={**headers, "Accept": "application/json, text/event-stream"},
                            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    # without an OAuth provider the SDK's client reports the refusal as an MCPError
    with pytest.raises(ExceptionGroup) as exc:
        async with mcp_http(served, token):
            pass
    assert exc.group_contains(MCPError, match="error response")


async def test_another_users_task_is_not_found(served: Served) -> None:
    async with mcp_http(served, served.alice) as session:
        mine = await call(session, "submit_task", {"prompt": ONE_STEP, "wait": True})
    async with mcp_http(served, served.bob) as session:
        for tool in ("get_task", "cancel_task", "approve_task"):
            assert (await error_of(session, tool, {"task_id": mine["id"]})).startswith("not_found:")
        assert (await call(session, "list_tasks", {}))["tasks"] == []


async def test_budget_too_small_and_read_only_tokens_are_tool_errors(served: Served) -> None:
    async with mcp_http(served, served.alice) as session:
        msg = await error_of(session, "submit_task", {"prompt": PROMPT, "budget_usd": 0.000001})
        assert msg.startswith("budget_too_small:") and "raise the budget" in msg
    async with mcp_http(served, served.reader) as session:
        assert (await error_of(session, "submit_task", {"prompt": PROMPT})).startswith("forbidden:")


async def test_cancel_reports_canceled(served: Served, sim: Simulator) -> None:
    sim.script.latency = lambda _m, kind, _t: 60.0 if kind == "worker" else 0.0
    async with mcp_http(served, served.alice) as session:
        task = await call(session, "submit_task", {"prompt": ONE_STEP})
        await served.wait_for(lambda: sim.calls("worker"), "the subtask at the provider")
        canceled = await call(session, "cancel_task", {"task_id": task["id"]})
        assert canceled["status"] == "canceled"
        assert (await call(session, "get_task", {"task_id": task["id"]}))["status"] == "canceled"


# stdio: `compound mcp` as a desktop host would start it ------------------------------


def stdio_params(served: Served, *args: str, env: dict[str, str]) -> StdioServerParameters:
    keep = {k: v for k, v in os.environ.items() if k.startswith(("LITELLM_", "COMPOUND_", "DISABLE_"))}
    return StdioServerParameters(command=sys.executable, args=["-m", "compound.cli", "mcp", *args],
                                 env={**keep, **env})


@asynccontextmanager
async def mcp_stdio(params: StdioServerParameters) -> AsyncIterator[ClientSession]:
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


@pytest.mark.slow
async def test_stdio_talks_to_a_server_by_url(served: Served) -> None:
    params = stdio_params(served, "--url", served.url, env={"COMPOUND_TOKEN": served.alice})
    async with mcp_stdio(params) as session:
        assert {t.name for t in (await session.list_tools()).tools} >= TOOLS
        done = await call(session, "submit_task", {"prompt": ONE_STEP, "wait": True})
        assert done["status"] == "completed" and done["result"]
        assert (await call(session, "estimate_cost", {"plan": PLAN}))["estimated_cost_usd"] > 0
    wrong = stdio_params(served, "--url", served.url, env={"COMPOUND_TOKEN": "cpd_wrong"})
    async with mcp_stdio(wrong) as session:
        assert (await error_of(session, "list_tasks", {})).startswith("unauthorized:")


@pytest.mark.slow
async def test_stdio_runs_in_process_on_the_local_store(served: Served, sim_settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "compound.toml"
    lines = [f'database_url = "sqlite:///{tmp_path / "local.db"}"',
             f'planner_model = "{sim_settings.planner_model}"']
    for tier in (1, 2, 3):
        lines.append(f"tier{tier}_models = {json.dumps(sim_settings.tier_models(tier))}")
    for name, cfg in sim_settings.models.items():
        lines.append(f'[models."{name}"]')
        lines.append(f'api_base = "{cfg.api_base}"')
    config.write_text("\n".join(lines) + "\n")
    params = stdio_params(served, env={"COMPOUND_CONFIG": str(config)})
    async with mcp_stdio(params) as session:
        done = await call(session, "submit_task", {"prompt": ONE_STEP, "wait": True})
        assert done["status"] == "completed" and done["result"]
        assert [t["id"] for t in (await call(session, "list_tasks", {}))["tasks"]] == [done["id"]]
    # it ran on the local store, not the served one
    from compound.store import open_store

    async with open_store(f"sqlite:///{tmp_path / 'local.db'}") as local:
        assert (await local.head(done["id"])).status == "completed"
