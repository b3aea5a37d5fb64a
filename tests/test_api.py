"""The HTTP API against the real app, a real SQLite file and the simulator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import Session, select
from structlog.testing import capture_logs

from compound.simulator import Simulator
from compound.store.models import ApiToken
from compound.store.users import hash_token, revoke_token
from tests.fixtures.api import Api

PLAN = {"reasoning": "two then one", "subtasks": [
    {"description": "first", "tier_hint": 1, "depends_on": []},
    {"description": "second", "tier_hint": 2, "depends_on": []},
    {"description": "join", "tier_hint": 2, "depends_on": [0, 1]}]}


async def test_submit_poll_complete(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "find a and find b", "budget_usd": 0.5},
                            headers=api.auth(api.alice))
    assert r.status_code == 202
    body = r.json()
    assert body["status"] in ("queued", "planning", "planned", "executing") and body["budget_usd"] == 0.5
    done = await api.wait(body["id"], api.alice)
    assert done["status"] == "completed"
    assert done["result"] and done["planner"]["cost_usd"] > 0
    assert all(s["status"] == "completed" and s["cost_usd"] > 0 and s["result"] for s in done["subtasks"])
    assert done["total_cost_usd"] > sum(s["cost_usd"] for s in done["subtasks"])
    listing = (await api.http.get("/v1/tasks", headers=api.auth(api.alice))).json()
    assert listing["tasks"][0]["id"] == body["id"] and listing["tasks"][0]["subtasks_done"] == len(done["subtasks"])


async def test_a_given_plan_skips_decomposition(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    assert r.status_code == 202
    done = await api.wait(r.json()["id"], api.alice)
    assert [s["description"] for s in done["subtasks"]] == ["first", "second", "join"]
    assert done["planner"] is None and done["reasoning"] == "two then one"


async def test_symbiont_routes_answer_their_shapes(api: Api) -> None:
    r = await api.http.post("/task/compound", json={"prompt": "look up x and look up y"},
                            headers=api.auth(api.alice))
    assert r.status_code == 200
    created = r.json()
    assert set(created) == {"id", "status", "subtask_count"} and created["subtask_count"] == 3
    await api.app.state.executor.wait(created["id"], timeout=60)
    prog = (await api.http.get(f"/task/{created['id']}/progress", headers=api.auth(api.alice))).json()
    assert set(prog) == {"id", "prompt", "status", "reasoning", "subtasks", "created_at", "planned_at",
                         "completed_at", "total_cost", "result", "error"}
    assert set(prog["subtasks"][0]) == {"id", "index", "description", "tier_hint", "tier_assigned", "model",
                                        "depends_on", "status", "result", "cost", "started_at", "completed_at"}
    recent = (await api.http.get("/tasks/recent?limit=5", headers=api.auth(api.alice))).json()
    assert isinstance(recent, list) and recent[0]["id"] == created["id"]
    assert set(recent[0]) == {"id", "prompt", "status", "subtask_count", "completed_count", "total_cost",
                              "created_at", "completed_at"}
    # the body token is accepted on submission, never in a query string
    r2 = await api.http.post("/task/compound", json={"prompt": "q", "token": api.bob})
    assert r2.status_code == 200
    assert (await api.http.get("/tasks/recent")).status_code == 401
    assert (await api.http.get(f"/tasks/recent?token={api.bob}")).status_code == 401


async def test_open_symbiont_reads_is_a_setting(api: Api) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(update={"open_symbiont_reads": True})
    assert (await api.http.get("/tasks/recent")).status_code == 401  # never open
    assert (await api.http.get("/v1/tasks")).status_code == 401


async def test_users_are_isolated_and_admin_sees_all(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "alice's", "plan": PLAN}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    assert (await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.bob))).status_code == 404
    assert (await api.http.get(f"/task/{task_id}/progress", headers=api.auth(api.bob))).status_code == 404
    assert (await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.auth(api.bob))).status_code == 404
    assert (await api.http.get("/v1/tasks", headers=api.auth(api.bob))).json()["tasks"] == []
    assert (await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.admin))).status_code == 200
    ids = [t["id"] for t in (await api.http.get("/v1/tasks", headers=api.auth(api.admin))).json()["tasks"]]
    assert task_id in ids
    missing = await api.http.get("/v1/tasks/t_doesnotexist", headers=api.auth(api.alice))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    await api.wait(task_id, api.alice)


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer "])
async def test_401_without_a_valid_token(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = await api.http.get("/v1/tasks", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"


async def test_revoked_tokens_stop_working_and_scopes_are_enforced(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "x"}, headers=api.auth(api.reader))
    assert r.status_code == 403
    engine = api.app.state.store.engine
    with Session(engine) as s:
        row = s.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(api.bob))).one()
    revoke_token(engine, row.id)
    assert (await api.http.get("/v1/tasks", headers=api.auth(api.bob))).status_code == 401
    with Session(engine) as s:  # only hashes are stored
        stored = [t.token_hash for t in s.exec(select(ApiToken))]
    assert api.alice not in stored and hash_token(api.alice) in stored


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 20001}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({}, "prompt"),
        ({"prompt": 12}, "prompt"),
        ({"prompt": "x", "budget_usd": -1}, "budget_usd"),
        ({"prompt": "x", "budget_usd": "lots"}, "budget_usd"),
        ({"prompt": "x", "priority": 9}, "priority"),
        ({"prompt": "x", "surprise": 1}, "surprise"),
        ({"prompt": "nul \u0000 byte"}, "NUL"),
        ({"prompt": "lone \ud800 surrogate"}, "prompt"),
        ({"prompt": "x", "plan": {"subtasks": [{"description": "a\udfff", "depends_on": []}]}}, "surrogate"),
        ({"prompt": "x", "plan": {"subtasks": [{"description": "a\u0000", "depends_on": []}]}}, "NUL"),
        ({"prompt": "x", "plan": {"subtasks": [{"description": "a", "depends_on": [0]}]}}, "depends on itself"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    # json.dumps escapes lone surrogates as \ud800, as a hostile client would send them
    r = await api.http.post("/v1/tasks", content=json.dumps(body),
                            headers={**api.auth(api.alice), "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


async def test_an_invalid_plan_lists_every_error(api: Api) -> None:
    plan = {"subtasks": [{"description": "", "tier_hint": 5, "depends_on": [3]}, {"description": "b", "depends_on": [1]}]}
    r = await api.http.post("/v1/tasks", json={"prompt": "x", "plan": plan}, headers=api.auth(api.alice))
    assert r.status_code == 422
    assert len(r.json()["error"]["errors"]) >= 3


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2]", b"null", b'{"prompt": "x",}', b"\xff\xfe\x0bdS9"])
async def test_bad_json_is_422(api: Api, raw: bytes) -> None:
    r = await api.http.post("/v1/tasks", content=raw,
                            headers={**api.auth(api.alice), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_big_bodies_are_413(api: Api) -> None:
    big = json.dumps({"prompt": "x" * 2_000_000})
    r = await api.http.post("/v1/tasks", content=big,
                            headers={**api.auth(api.alice), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "status=done", "cursor=%%%"])
async def test_bad_listing_queries_are_422(api: Api, query: str) -> None:
    r = await api.http.get(f"/v1/tasks?{query}", headers=api.auth(api.alice))
    assert r.status_code == 422, r.text


async def test_cursor_paging_walks_every_task_once(api: Api) -> None:
    ids = []
    for i in range(5):
        r = await api.http.post("/v1/tasks", json={"prompt": f"t{i}", "plan": PLAN, "approve": False},
                                headers=api.auth(api.alice))
        ids.append(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        q = "/v1/tasks?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.http.get(q, headers=api.auth(api.alice))).json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


async def test_rate_limit_answers_429_with_retry_after(api: Api) -> None:
    from compound.api.ratelimit import RateLimiter

    api.app.state.ratelimit = RateLimiter(2)
    codes = []
    for _ in range(3):
        r = await api.http.post("/v1/tasks", json={"prompt": "x", "plan": PLAN, "approve": False},
                                headers=api.auth(api.alice))
        codes.append(r.status_code)
    assert codes == [202, 202, 429]
    assert int(r.headers["retry-after"]) >= 1
    other = await api.http.post("/v1/tasks", json={"prompt": "x", "plan": PLAN, "approve": False},
                                headers=api.auth(api.bob))
    assert other.status_code == 202


async def test_cancel_and_approve(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "x", "plan": PLAN, "approve": False},
                            headers=api.auth(api.alice))
    task_id = r.json()["id"]
    await api.app.state.executor.wait_planned(task_id, timeout=60)
    assert (await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))).json()["status"] == "planned"
    a = await api.http.post(f"/v1/tasks/{task_id}/approve", headers=api.auth(api.alice))
    assert a.status_code == 200
    done = await api.wait(task_id, api.alice)
    assert done["status"] == "completed"
    again = await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.auth(api.alice))
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert (await api.http.post(f"/v1/tasks/{task_id}/approve", headers=api.auth(api.alice))).status_code == 409


async def test_cancel_a_running_task(api: Api, sim: Simulator) -> None:
    sim.script.latency = lambda _m, kind, _t: 0.5 if kind == "worker" else 0.0
    r = await api.http.post("/v1/tasks", json={"prompt": "x", "plan": PLAN}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    import asyncio

    for _ in range(200):  # both independent subtasks are at the provider
        await asyncio.sleep(0.02)
        if len(sim.calls("worker")) == 2:
            break
    c = await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.auth(api.alice))
    assert c.status_code == 200 and c.json()["status"] == "canceled"
    n = len(sim.calls("worker"))
    await asyncio.sleep(0.6)
    assert len(sim.calls("worker")) == n == 2


async def test_validate_a_plan(api: Api) -> None:
    ok = (await api.http.post("/v1/plans/validate", json={"plan": PLAN}, headers=api.auth(api.alice))).json()
    assert ok["valid"] and ok["waves"] == [[0, 1], [2]] and ok["critical_path"] == [0, 2]
    assert ok["estimated_cost_usd"] > 0
    bad = (await api.http.post("/v1/plans/validate", json={"plan": {"subtasks": [{"description": "a", "depends_on": [0, 4]}]}},
                               headers=api.auth(api.alice))).json()
    assert not bad["valid"] and len(bad["errors"]) == 2


async def test_healthz_and_docs(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    spec = (await api.http.get("/openapi.json")).json()
    for path in ("/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/cancel", "/v1/plans/validate",
                 "/task/compound", "/task/{task_id}/progress", "/tasks/recent"):
        assert path in spec["paths"], path
    assert (await api.http.get("/docs")).status_code == 200
    # every route documents its shapes with an example
    schemas = spec["components"]["schemas"]
    for name in ("TaskCreate", "TaskOut", "TaskList", "PlanValidateIn", "PlanValidateOut", "CompoundTaskRequest",
                 "CompoundTaskResponse", "TaskProgressResponse", "TaskSummary", "CostsOut", "SpendSummary"):
        assert schemas[name].get("examples"), name


async def test_the_planned_log_line_counts_a_streamed_plans_subtasks(api: Api) -> None:
    assert api.app.state.settings.stream_plans  # subtasks are stored as the plan streams in
    with capture_logs() as logs:
        r = await api.http.post("/v1/tasks", json={"prompt": "find a and find b"}, headers=api.auth(api.alice))
        done = await api.wait(r.json()["id"], api.alice)
    planned = [e for e in logs if e["event"] == "task status" and e["status"] == "planned"]
    assert len(done["subtasks"]) == 3
    assert [(e["task_id"], e["subtasks"]) for e in planned] == [(done["id"], 3)]


async def test_no_secret_reaches_a_response_or_a_log(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-ant-api03-" + "S" * 40
    api.app.state.executor.client.settings = api.app.state.executor.client.settings.model_copy(
        update={"anthropic_api_key": __import__("pydantic").SecretStr(key)})
    with capture_logs() as logs:
        r = await api.http.post("/v1/tasks", json={"prompt": "leak a and b"}, headers=api.auth(api.alice))
        done = await api.wait(r.json()["id"], api.alice)
        bad = await api.http.get("/v1/tasks", headers={"Authorization": f"Bearer {api.alice}x"})
    text = json.dumps(done) + r.text + bad.text + json.dumps(logs, default=str)
    assert key not in text and api.alice not in text
