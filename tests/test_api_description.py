"""The API accepts what its OpenAPI description promises and refuses what it rules out:
one test per point where the two could part (dates, cursors, event ids, plans,
strict booleans and numbers)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.api import Api

PLAN = {"subtasks": [{"description": "only", "tier_hint": 1, "depends_on": []}]}


async def _spec(api: Api) -> dict[str, Any]:
    spec: dict[str, Any] = (await api.http.get("/openapi.json")).json()
    return spec


def _param(spec: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    params = spec["paths"][path][method]["parameters"]
    found: dict[str, Any] = next(p for p in params if p["name"] == name)
    return found


@pytest.mark.parametrize("value", ["2026-11-22", "2026-11-22T10:00:00Z", "2026-11-22T10:00:00.123456+02:00",
                                   "2026-11-22t10:00:00z", "2016-12-31T23:59:60Z", "2026-11-22T10:00:00", ""])
async def test_costs_take_every_date_and_date_time_the_description_allows(api: Api, value: str) -> None:
    r = await api.http.get("/v1/costs", params={"since": value}, headers=api.auth(api.alice))
    assert r.status_code == 200, r.text
    formats = {s.get("format") for s in _param(await _spec(api), "/v1/costs", "get", "since")["schema"]["anyOf"]}
    assert {"date", "date-time"} <= formats


@pytest.mark.parametrize("value", ["task_id", "yesterday", "2026-13-01", "2026-11-22T10:00", "1700000000"])
async def test_costs_refuse_what_is_no_date_naming_the_parameter(api: Api, value: str) -> None:
    r = await api.http.get("/v1/costs", params={"until": value}, headers=api.auth(api.alice))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("until:"), r.text


@pytest.mark.parametrize("query", ["since=9999-12-31", "until=9999-12-31", "since=9999-12-31T23:59:59-23:59",
                                   "since=0001-01-01T00:00:00%2B23:59", "since=0001-01-01&until=9999-12-31"])
async def test_dates_at_the_calendars_ends_answer_a_range(api: Api, query: str) -> None:
    r = await api.http.get(f"/v1/costs?{query}", headers=api.auth(api.alice))
    assert r.status_code == 200, r.text
    assert r.json()["calls"] == 0 and r.json()["groups"] == []


async def test_a_cursor_of_the_described_shape_pages_and_others_are_refused(api: Api) -> None:
    for i in range(3):
        r = await api.http.post("/v1/tasks", json={"prompt": f"t{i}", "plan": PLAN, "approve": False},
                                headers=api.auth(api.alice))
        assert r.status_code == 202
    first = (await api.http.get("/v1/tasks?limit=2", headers=api.auth(api.alice))).json()
    cursor = first["next_cursor"]
    pattern = _param(await _spec(api), "/v1/tasks", "get", "cursor")["schema"]["anyOf"][0]["pattern"]
    import re

    assert re.fullmatch(pattern, cursor), cursor
    rest = (await api.http.get("/v1/tasks", params={"cursor": cursor}, headers=api.auth(api.alice))).json()
    assert len(rest["tasks"]) == 1 and rest["next_cursor"] is None
    assert {t["id"] for t in first["tasks"]} | {t["id"] for t in rest["tasks"]} == {
        t["id"] for t in (await api.http.get("/v1/tasks", headers=api.auth(api.alice))).json()["tasks"]}
    # a cursor this server never gave out, but of the shape: the tasks before that instant
    r = await api.http.get("/v1/tasks", params={"cursor": "0.x"}, headers=api.auth(api.alice))
    assert r.status_code == 200 and r.json()["tasks"] == []
    r = await api.http.get("/v1/tasks", params={"cursor": "9999999999999999.zzz"}, headers=api.auth(api.alice))
    assert r.status_code == 200 and len(r.json()["tasks"]) == 3
    for bad in ("openai_api_key", "12", "1.a b", "1" * 17 + ".x"):
        r = await api.http.get("/v1/tasks", params={"cursor": bad}, headers=api.auth(api.alice))
        assert r.status_code == 422 and "cursor" in r.json()["error"]["message"], bad


@pytest.mark.parametrize("value", ["x", "1.5", "-1", "1" * 19, "²"])
async def test_a_last_event_id_outside_its_pattern_is_a_described_422(api: Api, value: str) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN, "approve": False},
                            headers=api.auth(api.alice))
    task_id = r.json()["id"]
    r = await api.http.get(f"/v1/tasks/{task_id}/events",
                           headers=[(k.encode(), v.encode()) for k, v in
                                    {**api.auth(api.alice), "Last-Event-ID": value}.items()])
    assert r.status_code == 422 and "Last-Event-ID" in r.json()["error"]["message"], r.text
    schema = _param(await _spec(api), "/v1/tasks/{task_id}/events", "get", "Last-Event-ID")["schema"]
    assert "pattern" in schema["anyOf"][0]


@pytest.mark.parametrize("since", ["1" * 19, "²", "-1"])
async def test_a_since_beyond_its_described_maximum_is_a_422(api: Api, since: str) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN, "approve": False},
                            headers=api.auth(api.alice))
    r = await api.http.get(f"/v1/tasks/{r.json()['id']}", params={"since": since, "wait": 1},
                           headers=api.auth(api.alice))
    assert r.status_code == 422 and "since" in r.json()["error"]["message"]
    schema = _param(await _spec(api), "/v1/tasks/{task_id}", "get", "since")["schema"]
    assert schema["maximum"] < 2**63 and int("9" * 18) <= schema["maximum"]


async def test_the_plan_is_described_as_a_plan_and_an_empty_one_is_refused(api: Api) -> None:
    spec = await _spec(api)
    body = spec["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[1]
    plan = spec["components"]["schemas"][ref]["properties"]["plan"]["anyOf"][0]
    assert plan["required"] == ["subtasks"] and plan["properties"]["subtasks"]["minItems"] == 1
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": {}}, headers=api.auth(api.alice))
    assert r.status_code == 422 and "subtasks" in r.json()["error"]["message"]


@pytest.mark.parametrize(("field", "value"), [
    ("approve", 0), ("approve", "false"), ("approve", None), ("budget_usd", "1"), ("budget_usd", True),
    ("priority", "2"), ("priority", True), ("priority", 2.5)])
async def test_booleans_and_numbers_are_strict(api: Api, field: str, value: Any) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN, field: value},
                            headers=api.auth(api.alice))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(f"{field}:"), r.text


async def test_json_numbers_of_every_kind_the_schema_allows_are_taken(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN, "approve": False, "priority": 1.0,
                                               "budget_usd": 1}, headers=api.auth(api.alice))
    assert r.status_code == 202, r.text
    assert r.json()["priority"] == 1 and r.json()["budget_usd"] == 1.0
