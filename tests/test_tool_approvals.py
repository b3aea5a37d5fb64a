"""Tool calls held for a person's approval (design.md section 11, "Approval of actions";
executor/approvals.py): a call whose server's policy asks for one waits as
`awaiting_approval` while the rest of the DAG goes on; approve runs it once (with the
arguments approved), deny hands the model the refusal, the timeout denies it, a cancel
ends it denied. The decision lives in the store, so a crash keeps the call waiting and
every host (this loop, the child process, queue workers) sees it. Through the public
API and CLI against the fixture MCP server; at the store with the fake tools for crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from compound.api.app import create_app
from compound.api.schemas import TaskOut
from compound.cli import _register
from compound.cli import app as cli_app
from compound.core.errors import Conflict, NotFound
from compound.core.settings import Settings
from compound.executor.steps import IN_DOUBT
from compound.llm.base import Completion, Message, ToolChoice
from compound.simulator import Simulator
from compound.store.base import RunStore
from compound.store.users import create_token
from compound.tools.config import McpServerConfig
from tests.fixtures.mcp_tools import HttpServer, http_server
from tests.fixtures.served import serving_in_thread
from tests.test_tool_loop import FakeTools, ScriptedLLM, asks, executor, plan, tool_messages

_register()
runner = CliRunner()


@pytest.fixture
def fixture_server(tmp_path: Path) -> Iterator[HttpServer]:
    env = {"MCP_TOOLS_COUNT_FILE": str(tmp_path / "count"), "MCP_TOOLS_NOTES": str(tmp_path / "notes")}
    with http_server(env=env) as server:
        yield server


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


class Api:
    """The app over ASGI with two users: alice submits, bob is someone else."""

    def __init__(self, app: Any, http: httpx.AsyncClient, alice: str, bob: str) -> None:
        self.app, self.http = app, http
        self.alice, self.bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}

    async def submit(self, the_plan: dict[str, Any]) -> str:
        r = await self.http.post("/v1/tasks", json={"prompt": "look after the incident", "plan": the_plan},
                                 headers=self.alice)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    async def snap(self, task_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/tasks/{task_id}", headers=self.alice)
        assert r.status_code == 200, r.text
        got: dict[str, Any] = r.json()
        return got

    async def until(self, task_id: str, check: Any, what: str, timeout: float = 60.0) -> dict[str, Any]:
        """The snapshot once check(snapshot) holds (a deadline, never a fixed sleep)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            snap = await self.snap(task_id)
            if check(snap):
                return snap
            assert loop.time() < deadline, f"timed out waiting for {what}: {snap}"
            await asyncio.sleep(0.02)

    async def held(self, task_id: str, n: int = 1) -> list[dict[str, Any]]:
        """The task's calls awaiting approval, once there are `n`."""
        snap = await self.until(task_id, lambda s: len(_awaiting(s)) >= n, f"{n} held call(s)")
        return _awaiting(snap)

    async def decide(self, task_id: str, call_id: str, verb: str, body: dict[str, Any] | None = None,
                     headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post(f"/v1/tasks/{task_id}/tool-calls/{call_id}/{verb}", json=body or {},
                                    headers=headers or self.alice)

    async def ended(self, task_id: str) -> dict[str, Any]:
        await self.app.state.executor.wait(task_id, timeout=60)
        return await self.snap(task_id)


def _awaiting(snap: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**c, "index": s["index"]} for s in snap["subtasks"] for c in s["tool_calls"]
            if c["status"] == "awaiting_approval"]


@contextlib.asynccontextmanager
async def serve(settings: Settings, llm: Any = None) -> AsyncIterator[Api]:
    app = create_app(settings.model_copy(update={"rate_limit_per_minute": 1000}), client=llm)
    async with app.router.lifespan_context(app):
        alice = create_token(app.state.store.engine, "alice", None)[1]
        bob = create_token(app.state.store.engine, "bob", None)[1]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield Api(app, http, alice, bob)


def fx(server: HttpServer, **config: Any) -> dict[str, McpServerConfig]:
    return {"fx": McpServerConfig(url=server.url, **config)}


def loop_settings(sqlite_url: str, server: HttpServer, **config: Any) -> Settings:
    return Settings(database_url=sqlite_url, executor_process=False, max_replans=0, mcp_servers=fx(server, **config))


def echo_then_answer(messages: list[Message], _choice: ToolChoice) -> Completion | str:
    """The echoing subtask asks for fx.echo once, then answers with what it was told;
    any other call (the other branch, the synthesis) answers at once."""
    text = " ".join(m["content"] or "" for m in messages)
    done = tool_messages(messages)
    if done:
        return f"told: {done[-1]['content']}"
    if "echo the note" in text and "other branch" not in text:
        return asks(("fx.echo", {"text": "original"}))
    return "other branch done" if "other branch" in text and "echo the note" not in text else "summary"


TWO_BRANCHES = {"subtasks": [{"description": "echo the note", "tier_hint": 1, "tools": ["fx.echo"]},
                             {"description": "the other branch", "tier_hint": 1}]}


# approve, deny, through the API ------------------------------------------------------------


async def test_a_held_call_waits_while_another_branch_finishes_and_runs_once_approved_with_edits(
        sqlite_url: str, fixture_server: HttpServer) -> None:
    llm = ScriptedLLM(echo_then_answer)
    async with serve(loop_settings(sqlite_url, fixture_server), llm) as api:
        task_id = await api.submit(TWO_BRANCHES)
        # the other branch completes while the call waits (the default policy holds
        # every tool not declared read-only)
        snap = await api.until(task_id, lambda s: _awaiting(s) and s["subtasks"][1]["status"] == "completed",
                               "a held call beside a finished branch")
        sub = snap["subtasks"][0]
        assert sub["status"] == "awaiting_approval" and snap["status"] == "executing"
        (call,) = sub["tool_calls"]
        assert (call["tool"], call["arguments"], call["approval"]) == ("fx.echo", {"text": "original"}, None)
        assert TaskOut.model_validate(snap).model_dump(mode="json") == snap  # the documented shape
        st = await api.app.state.store.load(task_id)
        assert st.reserved_usd == pytest.approx(0, abs=1e-12)  # nothing is reserved while a person decides
        # someone else's task is a 404, as for tasks; an unknown call too
        for r in (await api.decide(task_id, call["id"], "approve", headers=api.bob),
                  await api.decide(task_id, "tc_nope", "approve")):
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
        bad = await api.decide(task_id, call["id"], "approve", {"arguments": ["not", "an", "object"]})
        assert bad.status_code == 422 and "arguments" in bad.text
        r = await api.decide(task_id, call["id"], "approve", {"arguments": {"text": "edited"}})
        assert r.status_code == 200, r.text
        assert r.json()["approval"]["decision"] == "approved" and r.json()["approval"]["by"] == "alice"
        again = await api.decide(task_id, call["id"], "approve")
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict", again.text
        snap = await api.ended(task_id)
        assert snap["status"] == "completed", snap
        (call,) = snap["subtasks"][0]["tool_calls"]
        # the tool received the approved arguments; the record keeps both
        assert (call["status"], call["result"]) == ("ok", "edited")
        assert call["arguments"] == {"text": "original"} and call["approval"]["arguments"] == {"text": "edited"}
        assert snap["subtasks"][0]["result"] == "told: edited"
        # every step of the call is an event on the task's stream
        events = (await api.http.get(f"/v1/tasks/{task_id}/events", headers=api.alice)).text
        data = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: ")]
        assert [d["status"] for d in data if "tool" in d] == ["awaiting_approval", "running", "running", "ok"]
        sub_statuses = [d["status"] for d in data if "model" in d and d.get("index") == 0]
        assert sub_statuses[:3] == ["running", "awaiting_approval", "running"] and sub_statuses[-1] == "completed"


async def test_a_denied_call_reaches_the_model_as_its_result_and_the_loop_goes_on(
        sqlite_url: str, fixture_server: HttpServer) -> None:
    llm = ScriptedLLM(echo_then_answer)
    async with serve(loop_settings(sqlite_url, fixture_server), llm) as api:
        task_id = await api.submit({"subtasks": [TWO_BRANCHES["subtasks"][0]]})
        (call,) = await api.held(task_id)
        r = await api.decide(task_id, call["id"], "deny", {"message": "not during the incident"})
        assert r.status_code == 200 and r.json()["status"] == "denied", r.text
        for verb in ("deny", "approve"):  # decided: a second decision is a conflict
            assert (await api.decide(task_id, call["id"], verb)).status_code == 409
        snap = await api.ended(task_id)
        assert snap["status"] == "completed", snap
        (call,) = snap["subtasks"][0]["tool_calls"]
        assert call["status"] == "denied" and call["result"] is None
        assert call["approval"] == {"decision": "denied", "by": "alice", "at": call["approval"]["at"],
                                    "arguments": None, "message": "not during the incident"}
        # the model read the refusal, with its message, as the call's result
        (told,) = [m for t in llm.turns for m in tool_messages(t.messages)]
        assert told["is_error"] is True and "denied by alice: not during the incident" in told["content"]
        assert snap["subtasks"][0]["result"].startswith("told: the call was not run: denied by alice")


async def test_a_denied_direct_call_fails_its_subtask_and_is_never_sent(
        sqlite_url: str, fixture_server: HttpServer, tmp_path: Path) -> None:
    async with serve(loop_settings(sqlite_url, fixture_server), ScriptedLLM(lambda _m, _c: "unused")) as api:
        task_id = await api.submit({"subtasks": [{"description": "bump", "kind": "tool", "tool": "fx.count"}]})
        (call,) = await api.held(task_id)
        assert (await api.snap(task_id))["subtasks"][0]["status"] == "awaiting_approval"
        assert (await api.decide(task_id, call["id"], "deny")).status_code == 200
        snap = await api.ended(task_id)
        sub = snap["subtasks"][0]
        assert snap["status"] == "failed" and sub["status"] == "failed", snap
        assert sub["error"] == "fx.count: the call was not run: denied by alice"
        assert lines(tmp_path / "count") == []  # never sent


async def test_read_only_tools_and_the_never_policy_run_at_once(
        sqlite_url: str, fixture_server: HttpServer, tmp_path: Path) -> None:
    for config in ({"read_only": ["echo"]}, {"approval": "never"}):
        async with serve(loop_settings(sqlite_url, fixture_server, **config), ScriptedLLM(echo_then_answer)) as api:
            snap = await api.ended(await api.submit({"subtasks": [TWO_BRANCHES["subtasks"][0]]}))
            assert snap["subtasks"][0]["tool_calls"][0]["status"] == "ok", (config, snap)
    # "always" holds even a read-only tool
    async with serve(loop_settings(sqlite_url, fixture_server, approval="always", read_only=["echo"]),
                     ScriptedLLM(echo_then_answer)) as api:
        task_id = await api.submit({"subtasks": [TWO_BRANCHES["subtasks"][0]]})
        assert [c["tool"] for c in await api.held(task_id)] == ["fx.echo"]
        assert (await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.alice)).status_code == 200


async def test_a_call_without_a_decision_in_time_is_denied_by_the_timeout(
        sqlite_url: str, fixture_server: HttpServer) -> None:
    settings = loop_settings(sqlite_url, fixture_server).model_copy(update={"approval_timeout_s": 0.2})
    llm = ScriptedLLM(echo_then_answer)
    async with serve(settings, llm) as api:
        snap = await api.ended(await api.submit({"subtasks": [TWO_BRANCHES["subtasks"][0]]}))
        (call,) = snap["subtasks"][0]["tool_calls"]
        assert call["status"] == "denied" and call["approval"]["by"] == "system", call
        assert "no decision within 0.2 s" in call["approval"]["message"]
        (told,) = [m for t in llm.turns for m in tool_messages(t.messages)]
        assert "no decision within 0.2 s" in told["content"]


async def test_a_cancel_while_a_call_awaits_approval_denies_it(
        sqlite_url: str, fixture_server: HttpServer, tmp_path: Path) -> None:
    async with serve(loop_settings(sqlite_url, fixture_server), ScriptedLLM(lambda _m, _c: "unused")) as api:
        task_id = await api.submit({"subtasks": [{"description": "bump", "kind": "tool", "tool": "fx.count"}]})
        (call,) = await api.held(task_id)
        r = await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.alice)
        assert r.status_code == 200, r.text
        snap = await api.snap(task_id)
        sub = snap["subtasks"][0]
        assert snap["status"] == "canceled" and sub["status"] == "canceled", snap
        assert sub["tool_calls"][0]["status"] == "denied" and "canceled" in sub["tool_calls"][0]["error"]
        assert (await api.decide(task_id, call["id"], "approve")).status_code == 409
        assert lines(tmp_path / "count") == []


# the CLI -----------------------------------------------------------------------------------


def test_the_cli_approves_with_edited_arguments_and_denies_with_a_message(
        sim_settings: Settings, fixture_server: HttpServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = sim_settings.model_copy(update={"rate_limit_per_minute": 1000, "mcp_servers": fx(fixture_server),
                                                "max_replans": 0})
    api = create_app(settings, client=ScriptedLLM(lambda _m, _c: "summary"))
    with serving_in_thread(api) as url:
        token = create_token(api.state.store.engine, "dana")[1]
        monkeypatch.setenv("COMPOUND_URL", url)
        monkeypatch.setenv("COMPOUND_TOKEN", token)
        auth = {"Authorization": f"Bearer {token}"}
        the_plan = {"subtasks": [{"description": "echo", "kind": "tool", "tool": "fx.echo",
                                  "arguments": {"text": "original"}},
                                 {"description": "delete", "kind": "tool", "tool": "fx.delete",
                                  "arguments": {"item": "a"}}]}
        task_id = httpx.post(f"{url}/v1/tasks", json={"prompt": "p", "plan": the_plan}, headers=auth).json()["id"]

        def held() -> dict[int, str]:
            snap = httpx.get(f"{url}/v1/tasks/{task_id}", headers=auth).json()
            return {c["index"]: c["id"] for c in _awaiting(snap)}

        calls = _wait_sync(lambda: len(held()) == 2 and held(), "two held calls")
        bad = runner.invoke(cli_app, ["tasks", "approve-call", task_id, calls[0], "--arguments", "[1]"])
        assert bad.exit_code == 2 and "JSON object" in bad.output
        ok = runner.invoke(cli_app, ["tasks", "approve-call", task_id, calls[0], "--arguments", '{"text": "edited"}'])
        assert ok.exit_code == 0 and f"{calls[0]} approved (fx.echo" in ok.output, ok.output
        again = runner.invoke(cli_app, ["tasks", "approve-call", task_id, calls[0]])
        assert again.exit_code == 1 and "409" in again.output, again.output
        missing = runner.invoke(cli_app, ["tasks", "deny-call", task_id, "tc_nope"])
        assert missing.exit_code == 1 and "404" in missing.output
        denied = runner.invoke(cli_app, ["tasks", "deny-call", task_id, calls[1], "--message", "keep a"])
        assert denied.exit_code == 0 and f"{calls[1]} denied (fx.delete)" in denied.output, denied.output
        snap = _wait_sync(lambda: (s := httpx.get(f"{url}/v1/tasks/{task_id}", headers=auth).json())["status"]
                          in ("completed", "partial", "failed") and s, "the task's end")
        echo, delete = snap["subtasks"]
        assert (echo["status"], echo["result"]) == ("completed", "edited")
        assert delete["status"] == "failed" and delete["error"] == "fx.delete: the call was not run: denied by dana: keep a"


def _wait_sync(check: Any, what: str, timeout: float = 60.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return got


# the executor in a child process -----------------------------------------------------------


async def test_in_a_child_process_a_decision_reaches_the_held_call(
        sim: Simulator, sim_settings: Settings, fixture_server: HttpServer, tmp_path: Path) -> None:
    settings = sim_settings.model_copy(update={"executor_process": True, "mcp_servers": fx(fixture_server),
                                                "max_replans": 0})
    async with serve(settings) as api:
        task_id = await api.submit({"subtasks": [
            {"description": "bump the counter", "tier_hint": 1, "kind": "tool", "tool": "fx.count"},
            {"description": "echo a note", "tier_hint": 1, "tools": ["fx.echo"]}]})
        held = {c["index"]: c for c in await api.held(task_id, 2)}
        assert (await api.decide(task_id, held[0]["id"], "approve")).status_code == 200
        assert (await api.decide(task_id, held[1]["id"], "deny", {"message": "no notes today"})).status_code == 200
        snap = await api.ended(task_id)
        count, echo = snap["subtasks"]
        assert (count["status"], count["result"]) == ("completed", "1"), snap
        assert lines(tmp_path / "count") == [f"call {held[0]['id']}"]  # sent once, under its key
        assert echo["tool_calls"][0]["status"] == "denied"
        # the simulated model was told of the refusal in the tool result
        assert any("no notes today" in r["text"] for r in sim.calls("worker")), sim.calls("worker")


# crashes, at the store ---------------------------------------------------------------------


def _policy(**config: Any) -> dict[str, Any]:
    return {"mcp_servers": {"fx": McpServerConfig(url="http://127.0.0.1:9/mcp", **config)}}


async def _held_record(store: RunStore, task_id: str, status: str = "awaiting_approval") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        recs = [r for r in await store.tool_calls(task_id, 0) if r.status == status]
        if recs:
            return recs[0]
        assert loop.time() < deadline, f"no {status} call"
        await asyncio.sleep(0.02)


async def _crash(ex: Any) -> None:
    """Stop the executor as a crash would: nothing written for what was in flight."""
    ex._stopping = True
    cut = list(ex._running.values())
    for t in cut:
        t.cancel()
    await asyncio.gather(*cut, return_exceptions=True)


async def test_after_a_crash_a_held_call_still_waits_and_is_sent_once_approved(any_store: RunStore) -> None:
    tools = FakeTools()
    ex = executor(any_store, ScriptedLLM(lambda _m, _c: "unused"), tools, **_policy())
    st = await any_store.create_task(prompt="p", budget_usd=1.0, plan_in=plan({"kind": "tool", "tool": "fx.count"}))
    await ex.start()
    ex.submit(st.id)
    rec = await _held_record(any_store, st.id)
    await _crash(ex)
    ex2 = executor(any_store, ScriptedLLM(lambda _m, _c: "unused"), tools, **_policy())
    try:
        assert await ex2.start() == [st.id]
        await any_store.wait_for_status(st.id, frozenset({"executing"}), 20)
        again = await _held_record(any_store, st.id)
        assert again.id == rec.id and tools.calls == []  # waiting again, nothing sent
        with pytest.raises(NotFound):
            await any_store.decide_tool_call(st.id, "tc_nope", approve=True, by="ann")
        await any_store.decide_tool_call(st.id, rec.id, approve=True, by="ann")
        await ex2.wake(st.id)
        with pytest.raises(Conflict):
            await any_store.decide_tool_call(st.id, rec.id, approve=False, by="bob")
        assert await ex2.wait(st.id, timeout=60) == "completed"
    finally:
        await ex2.stop()
    assert [name for name, _a, _m in tools.calls] == ["fx.count"]
    snap = await any_store.snapshot(st.id)
    assert snap["subtasks"][0]["tool_calls"][0]["approval"]["by"] == "ann"


async def test_a_call_in_flight_at_a_crash_goes_to_approval_where_a_policy_applies(any_store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        return f"told: {done[0]['content']}" if done else asks(("fx.wait", {"text": "go"}))

    tools = FakeTools()
    ex = executor(any_store, ScriptedLLM(script), tools, **_policy())
    st = await any_store.create_task(prompt="p", budget_usd=1.0, plan_in=plan({"tools": ["fx.wait"]}))
    await ex.start()
    ex.submit(st.id)
    rec = await _held_record(any_store, st.id)
    await any_store.decide_tool_call(st.id, rec.id, approve=True, by="ann", arguments={"text": "edited"})
    await ex.wake(st.id)
    await asyncio.wait_for(tools.waiting.wait(), 20)  # sent, and in flight at the crash
    await _crash(ex)
    assert [a for _n, a, _m in tools.calls] == [{"text": "edited"}]
    ex2 = executor(any_store, ScriptedLLM(script), tools, **_policy())
    try:
        await ex2.start()
        again = await _held_record(any_store, st.id)  # fx.wait is not idempotent: a person decides again
        assert again.id == rec.id and again.decision is None
        await any_store.decide_tool_call(st.id, rec.id, approve=False, by="ann", message="it ran already")
        await ex2.wake(st.id)
        assert await ex2.wait(st.id, timeout=60) == "completed"
    finally:
        await ex2.stop()
    assert len(tools.calls) == 1  # never sent again
    snap = await any_store.snapshot(st.id)
    assert snap["subtasks"][0]["result"] == "told: the call was not run: denied by ann: it ran already"


# queue mode --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_on_queue_workers_a_decision_reaches_the_held_call(fixture_server: HttpServer, tmp_path: Path) -> None:
    from tests.fixtures.cluster import Cluster, wait_until
    from tests.fixtures.db import postgres_available

    if not postgres_available():
        pytest.skip("SKIPPED: queue mode needs PostgreSQL, and no server answers on 127.0.0.1:5432")
    c = Cluster(tmp_path / "cluster", env={"COMPOUND_MCP_SERVERS": json.dumps({"fx": {"url": fixture_server.url}}),
                                           "COMPOUND_MAX_REPLANS": "0"})
    (tmp_path / "cluster").mkdir()
    try:
        c.start()
        c.start_workers(1)
        port = c.start_api()
        c.wait_workers_ready(1)
        task = c.submit(port, {"prompt": "p", "plan": {"subtasks": [
            {"description": "bump", "kind": "tool", "tool": "fx.count"},
            {"description": "delete", "kind": "tool", "tool": "fx.delete", "arguments": {"item": "a"}}]}})
        url = f"http://127.0.0.1:{port}/v1/tasks/{task['id']}"

        def two_held() -> list[dict[str, Any]]:
            got = _awaiting(c.get(port, f"/v1/tasks/{task['id']}"))
            return got if len(got) == 2 else []

        held = wait_until(two_held, timeout=120, what="two held calls")
        calls = {h["index"]: h["id"] for h in held}
        ok = httpx.post(f"{url}/tool-calls/{calls[0]}/approve", json={}, headers=c.headers(), timeout=60)
        no = httpx.post(f"{url}/tool-calls/{calls[1]}/deny", json={"message": "keep a"}, headers=c.headers(),
                        timeout=60)
        assert ok.status_code == 200 and no.status_code == 200, (ok.text, no.text)
        snap = c.wait_terminal(port, [task["id"]])[task["id"]]
        count, delete = snap["subtasks"]
        assert (count["status"], count["result"]) == ("completed", "1"), snap
        assert lines(tmp_path / "count") == [f"call {calls[0]}"]
        assert delete["status"] == "failed" and delete["error"].endswith("denied by u: keep a"), snap
    finally:
        c.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_queue_worker_killed_between_intent_and_result_never_runs_the_call_twice(
        fixture_server: HttpServer, tmp_path: Path) -> None:
    """The worker running a task dies with a non-idempotent call in flight; another
    worker resumes the task: the finished call is replayed, the one in flight is shown
    unknown and not sent again."""
    from tests.fixtures.cluster import Cluster, wait_until
    from tests.fixtures.db import postgres_available

    if not postgres_available():
        pytest.skip("SKIPPED: queue mode needs PostgreSQL, and no server answers on 127.0.0.1:5432")
    servers = {"fx": {"url": fixture_server.url, "approval": "never"}}
    c = Cluster(tmp_path / "cluster", separate_system_db=True,
                env={"COMPOUND_MCP_SERVERS": json.dumps(servers), "COMPOUND_MAX_REPLANS": "0"})
    (tmp_path / "cluster").mkdir()
    try:
        c.start()
        victim = c.start_worker()
        port = c.start_api()
        c.wait_workers_ready(1)
        task = c.submit(port, {"prompt": "bump and wait", "plan": {"subtasks": [
            {"description": "bump the counter", "kind": "tool", "tool": "fx.count"},
            {"description": "wait for the page", "kind": "tool", "tool": "fx.sleep", "arguments": {"seconds": 600},
             "depends_on": [0]}]}})
        wait_until(lambda: "sleep started" in lines(tmp_path / "notes"), timeout=120, what="the sleep call in flight")
        survivor = c.start_worker()
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        snap = c.wait_terminal(port, [task["id"]], timeout=240)[task["id"]]
        assert survivor.poll() is None
    finally:
        c.stop()
    assert snap["status"] == "partial", snap
    count, wait = snap["subtasks"]
    assert lines(tmp_path / "count") == [f"call {count['tool_calls'][0]['id']}"]  # ran exactly once
    assert count["status"] == "completed" and count["result"] == "1"
    assert lines(tmp_path / "notes").count("sleep started") == 1  # not sent again
    assert [call["status"] for call in wait["tool_calls"]] == ["unknown"]
    assert wait["status"] == "failed" and IN_DOUBT in wait["error"]


def test_the_live_view_names_a_held_call_and_the_commands_that_decide_it() -> None:
    from rich.console import Console

    from compound.cli.live import render_snapshot

    call = {"id": "tc_1", "tool": "fx.count", "arguments": {"n": 1}, "status": "awaiting_approval", "result": None,
            "error": None, "started_at": None, "completed_at": None, "approval": None}
    sub = {"index": 0, "status": "awaiting_approval", "tier_assigned": 1, "model": None, "started_at": None,
           "completed_at": None, "cost_usd": 0.0, "description": "bump", "depends_on": [], "tool_calls": [call]}
    console = Console(width=200, record=True)
    console.print(render_snapshot({"id": "t_1", "status": "executing", "total_cost_usd": 0.0, "budget_usd": 1.0,
                                   "subtasks": [sub]}))
    out = console.export_text()
    assert "awaiting_approval" in out
    assert 'awaiting approval: fx.count {"n": 1} (compound tasks approve-call | deny-call t_1 tc_1)' in out


# the MCP door ------------------------------------------------------------------------------


async def test_the_mcp_door_approves_with_edited_arguments_and_denies_with_a_message(
        sim_settings: Settings, fixture_server: HttpServer, tmp_path: Path) -> None:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    settings = sim_settings.model_copy(update={"rate_limit_per_minute": 1000, "mcp_servers": fx(fixture_server),
                                                "max_replans": 0})
    api = create_app(settings, client=ScriptedLLM(lambda _m, _c: "summary"))
    with serving_in_thread(api) as url:
        dana, erin = (create_token(api.state.store.engine, name)[1] for name in ("dana", "erin"))

        @contextlib.asynccontextmanager
        async def session(token: str) -> AsyncIterator[ClientSession]:
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                          timeout=httpx2.Timeout(30, read=60)) as http, \
                    streamable_http_client(url + "/mcp", http_client=http) as (read, write), \
                    ClientSession(read, write) as s:
                await s.initialize()
                yield s

        async def call(s: ClientSession, tool: str, args: dict[str, Any]) -> tuple[bool, Any]:
            out = await s.call_tool(tool, args)
            text = out.content[0].text  # type: ignore[union-attr]
            return bool(out.is_error), text if out.is_error else json.loads(text)

        the_plan = {"subtasks": [{"description": "echo", "kind": "tool", "tool": "fx.echo",
                                  "arguments": {"text": "original"}},
                                 {"description": "delete", "kind": "tool", "tool": "fx.delete",
                                  "arguments": {"item": "a"}}]}
        async with session(dana) as s:
            failed, task = await call(s, "submit_task", {"prompt": "p", "plan": the_plan})
            assert not failed, task
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while len(held := _awaiting((await call(s, "get_task", {"task_id": task["id"]}))[1])) < 2:
                assert loop.time() < deadline, "timed out waiting for two held calls"
                await asyncio.sleep(0.02)
            calls = {c["index"]: c["id"] for c in held}
            async with session(erin) as other:  # someone else's task: not found, nothing decided
                failed, text = await call(other, "approve_tool_call", {"task_id": task["id"], "call_id": calls[0]})
                assert failed and "not_found:" in text
            failed, text = await call(s, "deny_tool_call", {"task_id": task["id"], "call_id": calls[1],
                                                            "message": "bad\u0000"})
            assert failed and "invalid_request: invalid message: contains a NUL" in text
            failed, text = await call(s, "approve_tool_call", {"task_id": task["id"], "call_id": "tc_nope"})
            assert failed and "not_found:" in text
            failed, approved = await call(s, "approve_tool_call", {"task_id": task["id"], "call_id": calls[0],
                                                                   "arguments": {"text": "edited"}})
            assert not failed and approved["approval"]["decision"] == "approved", approved
            assert approved["approval"]["by"] == "dana" and approved["index"] == 0
            failed, text = await call(s, "approve_tool_call", {"task_id": task["id"], "call_id": calls[0]})
            assert failed and "conflict:" in text
            failed, denied = await call(s, "deny_tool_call", {"task_id": task["id"], "call_id": calls[1],
                                                              "message": "keep a"})
            assert not failed and denied["status"] == "denied", denied
        end = loop.time() + 60
        while (snap := await api.state.store.snapshot(task["id"]))["status"] not in ("completed", "partial", "failed"):
            assert loop.time() < end, f"timed out waiting for the task's end: {snap['status']}"
            await asyncio.sleep(0.02)
        echo, delete = snap["subtasks"]
        assert (echo["status"], echo["result"]) == ("completed", "edited")
        assert delete["error"] == "fx.delete: the call was not run: denied by dana: keep a"
        assert delete["tool_calls"][0]["status"] == "denied" and delete["tool_calls"][0]["completed_at"]
