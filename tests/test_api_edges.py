"""API edges a new user meets: one rule for unknown
fields, a bare plan to validate, hints, 413 for chunked bodies, rounded money, empty
query values, OPTIONS, open reads by task id only, offline /docs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from compound.simulator import Simulator
from tests.fixtures.api import Api

PLAN = {"reasoning": "two then one", "subtasks": [
    {"description": "first", "tier_hint": 1, "depends_on": []},
    {"description": "second", "tier_hint": 2, "depends_on": []},
    {"description": "join", "tier_hint": 2, "depends_on": [0, 1]}]}


async def test_compound_task_accepts_a_budget_and_refuses_unknown_fields(api: Api) -> None:
    r = await api.http.post("/task/compound", json={"prompt": "p", "budget_usd": 0.25},
                            headers=api.auth(api.alice))
    assert r.status_code == 200, r.text
    task = await api.wait(r.json()["id"], api.alice)  # no call left in flight at teardown
    assert task["budget_usd"] == 0.25
    r = await api.http.post("/task/compound", json={"prompt": "p", "budget": 0.25}, headers=api.auth(api.alice))
    assert r.status_code == 422 and "budget" in r.json()["error"]["message"]


async def test_validate_accepts_a_bare_plan(api: Api) -> None:
    for body in (PLAN, {"plan": PLAN}):
        ok = (await api.http.post("/v1/plans/validate", json=body, headers=api.auth(api.alice))).json()
        assert ok["valid"] and ok["waves"] == [[0, 1], [2]], ok


async def test_json_without_content_type_gets_a_hint(api: Api) -> None:
    r = await api.http.post("/v1/tasks", content=json.dumps({"prompt": "x"}),
                            headers={**api.auth(api.alice), "Content-Type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["error"]["message"]
    r = await api.http.post("/v1/tasks", content=json.dumps({"prompt": "x"}), headers=api.auth(api.alice))
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["error"]["message"]


async def test_a_chunked_body_over_the_limit_is_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 100_000
        yield b'"}'

    r = await api.http.post("/v1/tasks", content=chunks(),
                            headers={**api.auth(api.alice), "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_money_has_no_float_noise(api: Api) -> None:
    from compound.api.schemas import TaskSummaryOut

    row = TaskSummaryOut(id="t", prompt="p", status="completed", priority=2, subtasks_total=1, subtasks_done=1,
                         total_cost_usd=0.007474000000000001, budget_usd=1.0, created_at=None, completed_at=None)
    assert '"total_cost_usd":0.007474,' in row.model_dump_json()
    r = await api.http.post("/v1/tasks", json={"prompt": "a and b and c", "budget_usd": 0.5},
                            headers=api.auth(api.alice))
    await api.wait(r.json()["id"], api.alice)
    raw = (await api.http.get(f"/v1/tasks/{r.json()['id']}", headers=api.auth(api.alice))).text
    for number in json.loads(raw, parse_float=str)["subtasks"][0:1]:
        assert len(number["cost_usd"].replace("0.", "").lstrip("0")) <= 10


@pytest.mark.parametrize("query", ["until=", "since=&until=", "since="])
async def test_empty_query_values_are_absent(api: Api, query: str) -> None:
    r = await api.http.get(f"/v1/costs?{query}", headers=api.auth(api.alice))
    assert r.status_code == 200, r.text


async def test_empty_cursor_is_absent_and_junk_is_a_documented_422(api: Api) -> None:
    assert (await api.http.get("/v1/tasks?cursor=", headers=api.auth(api.alice))).status_code == 200
    r = await api.http.get("/v1/tasks?cursor=junk", headers=api.auth(api.alice))
    assert r.status_code == 422 and "cursor" in r.json()["error"]["message"]
    spec = (await api.http.get("/openapi.json")).json()
    params = spec["paths"]["/v1/tasks"]["get"]["parameters"]
    assert "422" in next(p for p in params if p["name"] == "cursor")["description"]


@pytest.mark.parametrize("value", ["null", "", "undefined"])
async def test_last_event_id_null_replays_from_the_start(api: Api, value: str) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    await api.wait(task_id, api.alice)
    r = await api.http.get(f"/v1/tasks/{task_id}/events", headers={**api.auth(api.alice), "Last-Event-ID": value})
    assert r.status_code == 200
    assert "id: 1\n" in r.text.replace("\r\n", "\n")


async def test_options_lists_every_method(api: Api) -> None:
    r = await api.http.options("/v1/tasks", headers=api.auth(api.alice))
    assert r.status_code in (200, 204)
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
    r = await api.http.options("/v1/tasks/t_x/cancel")
    assert "POST" in r.headers["allow"]


async def test_open_reads_give_progress_by_id_only(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "secret of alice", "plan": PLAN},
                            headers=api.auth(api.alice))
    task_id = r.json()["id"]
    await api.wait(task_id, api.alice)
    api.app.state.settings = api.app.state.settings.model_copy(update={"open_symbiont_reads": True})
    assert (await api.http.get("/tasks/recent")).status_code == 401
    prog = await api.http.get(f"/task/{task_id}/progress")
    assert prog.status_code == 200 and prog.json()["id"] == task_id
    assert prog.json()["result"]  # the answer is in the progress
    # a token still means that user's view: bob does not see alice's task
    assert (await api.http.get(f"/task/{task_id}/progress", headers=api.auth(api.bob))).status_code == 404
    recent = (await api.http.get("/tasks/recent", headers=api.auth(api.bob))).json()
    assert task_id not in [t["id"] for t in recent]


@pytest.mark.parametrize(("page", "assets"), [("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
                                               ("/redoc", ("redoc.standalone.js",))])
async def test_docs_load_no_third_party_asset(api: Api, page: str, assets: tuple[str, ...]) -> None:
    html = (await api.http.get(page)).text
    assert "cdn" not in html.lower() and "https://" not in html and "fonts.googleapis" not in html
    for asset in assets:
        src = next(part.split('"')[0] for part in html.split('"/docs-assets/')[1:] if part.startswith(asset))
        r = await api.http.get(f"/docs-assets/{src}")
        assert r.status_code == 200 and len(r.content) > 1000


async def test_one_log_line_per_task_state_change(api: Api, sim: Simulator) -> None:
    from structlog.testing import capture_logs

    from compound.simulator import Failure

    with capture_logs() as logs:
        ok = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
        await api.wait(ok.json()["id"], api.alice)
        sim.fail(*[Failure(status=401)] * 20)
        bad = await api.http.post("/v1/tasks", json={"prompt": "q", "plan": PLAN}, headers=api.auth(api.alice))
        await api.wait(bad.json()["id"], api.alice)
        # The store logs a change once its write returns on the executor's thread, which
        # may be just after the change reached this loop: wait for both ends' lines.
        ends = {ok.json()["id"]: "completed", bad.json()["id"]: "failed"}
        async with asyncio.timeout(10):
            while not all(any(e.get("task_id") == t and e.get("status") in (end, "partial") for e in logs)
                          for t, end in ends.items()):
                await asyncio.sleep(0.01)
    lines = [e for e in logs if e["event"] == "task status"]
    mine = [e["status"] for e in lines if e["task_id"] == ok.json()["id"]]
    assert mine == ["planning", "planned", "executing", "completed"], mine
    failed = [e for e in lines if e["task_id"] == bad.json()["id"] and e["status"] in ("failed", "partial")]
    assert failed and failed[-1]["error"] and failed[-1]["log_level"] == "warning"


async def test_a_model_without_key_or_base_url_is_a_warning_at_start(monkeypatch: pytest.MonkeyPatch,
                                                                    sqlite_url: str) -> None:
    from structlog.testing import capture_logs

    from compound.api.app import create_app
    from compound.core.settings import Settings
    from tests.fixtures.fakes import FakeLLM

    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr("compound.core.logging.configure_logging", lambda *_a, **_k: None)  # keep capture_logs
    settings = Settings(database_url=sqlite_url, planner_model="openai/gpt-4.1-mini",
                        tier1_models=["openai/gpt-4.1-mini"], tier2_models=["anthropic/claude-sonnet-4-5"],
                        tier3_models=["openai/gpt-4.1"])
    app = create_app(settings, client=FakeLLM())
    with capture_logs() as logs:
        async with app.router.lifespan_context(app):
            pass
    warned = [e for e in logs if e.get("log_level") == "warning" and "provider key" in e["event"]]
    assert [(e["model"], e["set"]) for e in warned] == [("anthropic/claude-sonnet-4-5", "ANTHROPIC_API_KEY")]
