"""The A2A door, driven by the a2a-sdk client against the served app and the simulator."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from a2a.client import A2AClientError, Client, ClientConfig, create_client
from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import A2AError

from compound.simulator import Simulator
from compound.store.models import TaskStatus
from tests.fixtures.served import Served

PROMPT = "Compare SQLite and PostgreSQL for a small team and recommend one"
ONE_STEP = "Explain quicksort"  # the simulator plans it as one subtask


@asynccontextmanager
async def a2a(served: Served, token: str | None, *, streaming: bool = False) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        client = await create_client(served.url, ClientConfig(httpx_client=http, streaming=streaming))
        yield client


def message(text: str, **meta: float) -> pb.SendMessageRequest:
    msg = pb.Message(message_id="m-1", role=pb.ROLE_USER, parts=[pb.Part(text=text)])
    if meta:
        msg.metadata.update(meta)
    return pb.SendMessageRequest(message=msg)


async def test_agent_card_describes_the_skill_and_bearer_auth(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        card = (await http.get("/.well-known/agent-card.json")).json()
    assert card["name"] == "compound" and card["capabilities"]["streaming"] is True
    assert card["supportedInterfaces"][0]["url"] == served.url + "/a2a"
    assert card["skills"][0]["id"] == "compound-task"
    assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]


async def test_send_waits_for_the_answer_artifact(served: Served) -> None:
    async with a2a(served, served.alice) as client:
        got = [r async for r in client.send_message(message(PROMPT, budget_usd=0.5, priority=1))]
        task = got[-1].task
        assert task.status.state == pb.TASK_STATE_COMPLETED
        answer = task.artifacts[0].parts[0].text
        assert answer.startswith("Final answer built from")
        meta = dict(task.metadata["compound"])
        assert meta["status"] == TaskStatus.completed and meta["cost_usd"] > 0 and meta["budget_usd"] == 0.5
        again = await client.get_task(pb.GetTaskRequest(id=task.id))
        assert again.status.state == pb.TASK_STATE_COMPLETED and again.artifacts[0].parts[0].text == answer
    async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {served.alice}"}) as http:
        snap = (await http.get(f"/v1/tasks/{task.id}")).json()  # the same task in compound's store
    assert snap["result"] == answer and snap["priority"] == 1


async def test_stream_sends_status_updates_then_the_artifact(served: Served, sim: Simulator) -> None:
    release = sim.script.holds[PROMPT] = threading.Event()  # the calls wait for the first event
    events = []
    async with a2a(served, served.alice, streaming=True) as client:
        async for r in client.send_message(message(PROMPT)):
            events.append(r)
            release.set()
    kinds = [r.WhichOneof("payload") for r in events]
    assert kinds[0] == "task"
    updates = [r.status_update for r in events if r.HasField("status_update")]
    texts = [u.status.message.parts[0].text for u in updates if u.status.message.parts]
    assert any(t.startswith("subtask") and t.endswith("completed") for t in texts)
    assert {u.status.state for u in updates[:-1]} <= {pb.TASK_STATE_SUBMITTED, pb.TASK_STATE_WORKING}
    # the answer artifact arrives in chunks as the synthesis streams: the first starts it,
    # the others append, the last says so; joined, they are the task's result
    chunks = [r.artifact_update for r in events if r.HasField("artifact_update")]
    assert len(chunks) > 2
    assert [c.append for c in chunks] == [False] + [True] * (len(chunks) - 1)
    assert [c.last_chunk for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert {c.artifact.artifact_id for c in chunks} == {f"{events[0].task.id}-answer"}
    text = "".join(p.text for c in chunks for p in c.artifact.parts)
    assert text.startswith("Final answer built from")
    async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {served.alice}"}) as http:
        snap = (await http.get(f"/v1/tasks/{events[0].task.id}")).json()
    assert text == snap["result"]
    # the artifact's chunks come before the final status
    last_chunk = max(i for i, r in enumerate(events) if r.HasField("artifact_update"))
    assert kinds[last_chunk + 1:] == ["status_update"]
    assert kinds[-1] == "status_update" and updates[-1].status.state == pb.TASK_STATE_COMPLETED


async def test_v03_method_names_answer_too(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=120,
                                 headers={"Authorization": f"Bearer {served.alice}"}) as http:
        r = await http.post("/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {
            "message": {"kind": "message", "messageId": "m1", "role": "user",
                        "parts": [{"kind": "text", "text": ONE_STEP}]}}})
        result = r.json()["result"]
        assert result["status"]["state"] == "completed"
        got = (await http.post("/a2a", json={"jsonrpc": "2.0", "id": 2, "method": "tasks/get",
                                             "params": {"id": result["id"]}})).json()["result"]
        assert got["id"] == result["id"] and got["artifacts"][0]["parts"][0]["text"]


@pytest.mark.parametrize("token", [None, "cpd_wrong"])
async def test_missing_or_wrong_token_is_401(served: Served, token: str | None) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = await http.post("/a2a", headers=headers, json={"jsonrpc": "2.0", "id": 7, "method": "GetTask",
                                                            "params": {"id": "t_x"}})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32600
    async with a2a(served, token) as client:
        with pytest.raises(A2AClientError, match="401"):
            await client.get_task(pb.GetTaskRequest(id="t_x"))


async def test_another_users_task_is_not_found(served: Served) -> None:
    async with a2a(served, served.alice) as client:
        task = [r async for r in client.send_message(message(ONE_STEP))][-1].task
    async with a2a(served, served.bob) as client:
        with pytest.raises(A2AError) as exc:
            await client.get_task(pb.GetTaskRequest(id=task.id))
        assert "not found" in str(exc.value).lower() or "no task" in str(exc.value).lower()
        with pytest.raises(A2AError):
            await client.cancel_task(pb.CancelTaskRequest(id=task.id))


async def test_budget_too_small_is_an_invalid_params_error(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {served.alice}"}) as http:
        r = await http.post("/a2a", headers={"A2A-Version": "1.0"}, json={
            "jsonrpc": "2.0", "id": 3, "method": "SendMessage", "params": {"message": {
                "messageId": "m", "role": "ROLE_USER", "parts": [{"text": PROMPT}],
                "metadata": {"budget_usd": 0.000001}}}})
    err = r.json()["error"]
    assert err["code"] == -32602 and "cannot pay for planning" in err["message"]
    async with a2a(served, served.alice) as client:
        with pytest.raises(A2AError, match="cannot pay for planning"):
            [r async for r in client.send_message(message(PROMPT, budget_usd=0.000001))]


async def test_cancel_reports_canceled(served: Served, sim: Simulator) -> None:
    sim.script.latency = lambda _m, kind, _t: 60.0 if kind == "worker" else 0.0
    async with a2a(served, served.alice) as client:
        req = message(ONE_STEP)
        req.configuration.return_immediately = True
        task = [r async for r in client.send_message(req)][-1].task
        assert task.status.state in (pb.TASK_STATE_SUBMITTED, pb.TASK_STATE_WORKING)
        await served.wait_for(lambda: sim.calls("worker"), "the subtask at the provider")
        canceled = await client.cancel_task(pb.CancelTaskRequest(id=task.id))
        assert canceled.status.state == pb.TASK_STATE_CANCELED
        got = await client.get_task(pb.GetTaskRequest(id=task.id))
        assert got.status.state == pb.TASK_STATE_CANCELED
        assert json.loads(json.dumps(dict(got.metadata["compound"])))["status"] == "canceled"
        with pytest.raises(A2AError):  # a finished task cannot be canceled again
            await client.cancel_task(pb.CancelTaskRequest(id=task.id))


async def test_v03_message_stream_sends_sse_events(served: Served, sim: Simulator) -> None:
    body = {"jsonrpc": "2.0", "id": 9, "method": "message/stream", "params": {
        "message": {"kind": "message", "messageId": "m9", "role": "user", "parts": [{"kind": "text", "text": ONE_STEP}]}}}
    release = sim.script.holds[ONE_STEP] = threading.Event()  # the calls wait for the first event
    events = []
    async with httpx.AsyncClient(base_url=served.url, timeout=120,
                                 headers={"Authorization": f"Bearer {served.alice}"}) as http, \
            http.stream("POST", "/a2a", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                release.set()
    results = [e["result"] for e in events]
    assert results[0]["kind"] == "task"
    # 0.3's artifact-update events carry the chunks too: append after the first, lastChunk at the end
    chunks = [x for x in results if x.get("kind") == "artifact-update"]
    assert len(chunks) > 1, chunks
    assert [bool(c.get("append")) for c in chunks] == [False] + [True] * (len(chunks) - 1)
    assert [bool(c.get("lastChunk")) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    text = "".join(p["text"] for c in chunks for p in c["artifact"]["parts"])
    async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {served.alice}"}) as http:
        snap = (await http.get(f"/v1/tasks/{results[0]['id']}")).json()
    assert text == snap["result"] == snap["subtasks"][0]["result"]  # one subtask: its result is the answer
    assert results[-1]["kind"] == "status-update" and results[-1]["status"]["state"] == "completed"
