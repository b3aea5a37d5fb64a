"""SSE (order, reconnect with Last-Event-ID, end at a terminal state), /v1/costs
against hand-computed ledgers, /metrics after a task, and the CLI's live tree."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from sqlmodel import Session

from compound.store.base import RunStore
from compound.store.models import LedgerEntry, User, utcnow
from tests.fixtures.api import Api

PLAN = {"subtasks": [{"description": "a", "tier_hint": 1, "depends_on": []},
                     {"description": "b", "tier_hint": 2, "depends_on": [0]}]}


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        ev: dict[str, Any] = {}
        for line in block.split("\n"):
            if ":" in line and not line.startswith(":"):
                k, v = line.split(":", 1)
                ev[k] = v[1:] if v.startswith(" ") else v
        if "data" in ev:
            ev["data"] = json.loads(ev["data"])
            events.append(ev)
    return events


async def test_sse_replays_in_order_and_ends_at_the_terminal_state(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    async with api.http.stream("GET", f"/v1/tasks/{task_id}/events", headers=api.auth(api.alice)) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        body = "".join([chunk async for chunk in resp.aiter_text()])
    events = parse_sse(body)
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))
    tasks = [e["data"]["status"] for e in events if e["event"] == "task"]
    assert tasks == ["queued", "planning", "planned", "executing", "completed"]
    subs = [(e["data"]["index"], e["data"]["status"]) for e in events if e["event"] == "subtask"]
    assert subs == [(0, "running"), (0, "completed"), (1, "running"), (1, "completed")]
    assert events[-1]["event"] == "task" and events[-1]["data"]["result"]

    # reconnect after event 3: nothing missed, nothing repeated
    headers = {**api.auth(api.alice), "Last-Event-ID": "3"}
    async with api.http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as resp:
        rest = parse_sse("".join([c async for c in resp.aiter_text()]))
    assert [int(e["id"]) for e in rest] == ids[3:]


async def test_sse_is_authenticated_and_private(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    assert (await api.http.get(f"/v1/tasks/{task_id}/events")).status_code == 401
    assert (await api.http.get(f"/v1/tasks/{task_id}/events", headers=api.auth(api.bob))).status_code == 404
    bad = await api.http.get(f"/v1/tasks/{task_id}/events", headers={**api.auth(api.alice), "Last-Event-ID": "x"})
    assert bad.status_code == 422
    await api.wait(task_id, api.alice)


async def _ledger(store: RunStore) -> tuple[User, User]:
    engine = store.engine
    with Session(engine, expire_on_commit=False) as s:
        u1, u2 = User(name="ann"), User(name="ben")
        s.add_all([u1, u2])
        s.commit()
    t1 = await store.create_task(prompt="x", budget_usd=9, user_id=u1.id)
    t2 = await store.create_task(prompt="y", budget_usd=9, user_id=u2.id)
    day1 = datetime(2026, 11, 20, 10, tzinfo=utcnow().tzinfo)
    day2 = day1 + timedelta(days=1)
    rows = [  # task, user, kind, tier, model, cost, in, out, when
        (t1, u1, "planner", None, "m-cheap", 0.001, 100, 10, day1),
        (t1, u1, "subtask", 1, "m-cheap", 0.002, 200, 20, day1),
        (t1, u1, "subtask", 2, "m-mid", 0.010, 300, 30, day2),
        (t2, u2, "subtask", 2, "m-mid", 0.020, 400, 40, day2),
        (t2, u2, "synthesis", 2, "m-mid", 0.005, 50, 5, day2 + timedelta(hours=14)),
    ]
    with Session(engine) as s:
        for t, u, kind, tier, model, cost, i, o, at in rows:
            s.add(LedgerEntry(task_id=t.id, user_id=u.id, kind=kind, tier=tier, model=model, status="ok",
                              cost_usd=cost, input_tokens=i, output_tokens=o, created_at=at))
        s.commit()
    return u1, u2


def _groups(out: dict[str, Any]) -> dict[str, tuple[float, int, int, int]]:
    return {g["key"]: (round(g["cost_usd"], 9), g["calls"], g["input_tokens"], g["output_tokens"])
            for g in out["groups"]}


async def test_costs_group_in_sql(any_store: RunStore) -> None:
    u1, _ = await _ledger(any_store)
    since, until = datetime(2026, 11, 1, tzinfo=utcnow().tzinfo), datetime(2026, 12, 1, tzinfo=utcnow().tzinfo)
    everyone: dict[str, Any] = {"since": since, "until": until, "user_id": None}
    assert _groups(await any_store.costs(group_by="day", **everyone)) == {
        "2026-11-20": (0.003, 2, 300, 30), "2026-11-21": (0.030, 2, 700, 70), "2026-11-22": (0.005, 1, 50, 5)}
    assert _groups(await any_store.costs(group_by="model", **everyone)) == {
        "m-cheap": (0.003, 2, 300, 30), "m-mid": (0.035, 3, 750, 75)}
    assert _groups(await any_store.costs(group_by="tier", **everyone)) == {
        "planner": (0.001, 1, 100, 10), "tier 1": (0.002, 1, 200, 20), "tier 2": (0.030, 2, 700, 70),
        "synthesis": (0.005, 1, 50, 5)}  # the synthesis is a part of its own, whatever its tier
    tiers = await any_store.costs(group_by="tier", **everyone)
    assert [g["key"] for g in tiers["groups"]] == ["planner", "tier 1", "tier 2", "synthesis"]  # as a task spends
    assert _groups(await any_store.costs(group_by="user", **everyone)) == {
        "ann": (0.013, 3, 600, 60), "ben": (0.025, 2, 450, 45)}
    mine = await any_store.costs(group_by="model", since=since, until=until, user_id=u1.id)
    assert mine["total_usd"] == pytest.approx(0.013) and mine["calls"] == 3
    window = await any_store.costs(group_by=None, user_id=None, since=datetime(2026, 11, 21, tzinfo=utcnow().tzinfo),
                   until=datetime(2026, 11, 22, tzinfo=utcnow().tzinfo))
    assert window["total_usd"] == pytest.approx(0.030) and window["calls"] == 2


async def test_costs_route_filters_by_user_and_validates(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    done = await api.wait(r.json()["id"], api.alice)
    mine = (await api.http.get("/v1/costs?group_by=model", headers=api.auth(api.alice))).json()
    assert mine["total_usd"] == pytest.approx(done["total_cost_usd"])
    assert sum(g["cost_usd"] for g in mine["groups"]) == pytest.approx(mine["total_usd"])
    bobs = (await api.http.get("/v1/costs", headers=api.auth(api.bob))).json()
    assert bobs["total_usd"] == 0 and bobs["calls"] == 0
    admin = (await api.http.get("/v1/costs?group_by=user", headers=api.auth(api.admin))).json()
    assert [g["key"] for g in admin["groups"]] == ["alice"]
    for q in ("group_by=planet", "since=yesterday"):
        bad = await api.http.get(f"/v1/costs?{q}", headers=api.auth(api.alice))
        assert bad.status_code == 422, q
    inverted = await api.http.get("/v1/costs?since=2026-11-10&until=2026-11-01", headers=api.auth(api.alice))
    assert inverted.status_code == 200 and inverted.json()["calls"] == 0  # an empty range
    summary = (await api.http.get("/v1/costs/summary", headers=api.auth(api.alice))).json()
    assert summary["today_usd"] == pytest.approx(mine["total_usd"]) and summary["user"] == "alice"


async def test_metrics_expose_cost_and_tokens_after_a_task(api: Api) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    done = await api.wait(r.json()["id"], api.alice)
    text = (await api.http.get("/metrics")).text
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    cost = sum(v for k, v in lines.items() if k.startswith("compound_cost_usd_total"))
    assert cost == pytest.approx(done["total_cost_usd"], rel=1e-9)
    tokens_in = sum(v for k, v in lines.items() if k.startswith("compound_tokens_total") and 'direction="input"' in k)
    assert tokens_in == sum(s["input_tokens"] for s in done["subtasks"]) + _synthesis_tokens(api, done["id"])
    assert lines['compound_tasks{status="completed"}'] == 1
    assert lines["compound_calls_in_flight"] == 0
    assert any(k.startswith("compound_call_latency_seconds_bucket") for k in lines)


def _synthesis_tokens(api: Api, task_id: str) -> int:
    from sqlmodel import select

    with Session(api.app.state.store.engine) as s:
        rows = s.exec(select(LedgerEntry).where(LedgerEntry.task_id == task_id, LedgerEntry.kind != "subtask")).all()
    return sum(r.input_tokens for r in rows)


async def test_dashboard_is_served_without_external_assets(api: Api) -> None:
    html = (await api.http.get("/dashboard")).text
    assert "sessionStorage" in html and 'id="cost-chart"' in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere


def test_live_tree_and_cost_table_render() -> None:
    from compound.cli.live import cost_table, render_snapshot

    snap = {"id": "t_1", "status": "executing", "total_cost_usd": 0.0031, "budget_usd": 1.0,
            "planner": {"model": "p-model", "cost_usd": 0.001, "input_tokens": 10, "output_tokens": 5},
            "subtasks": [
                {"index": 0, "status": "completed", "tier_assigned": 1, "model": "m1", "started_at": "2026-11-23T00:00:00Z",
                 "completed_at": "2026-11-23T00:00:02Z", "cost_usd": 0.0011, "description": "first", "depends_on": [],
                 "error": None, "input_tokens": 100, "output_tokens": 10, "attempts": 1},
                {"index": 1, "status": "skipped", "tier_assigned": 2, "model": "m2", "started_at": None,
                 "completed_at": None, "cost_usd": 0.0, "description": "second", "depends_on": [0],
                 "error": "skipped: budget exhausted", "input_tokens": 0, "output_tokens": 0, "attempts": 0}],
            "synthesis": {"model": "m2", "cost_usd": 0.001, "input_tokens": 50, "output_tokens": 20, "calls": 1,
                          "worst_case": None}}
    console = Console(record=True, width=140)
    console.print(render_snapshot(snap))
    console.print(cost_table(snap))
    out = console.export_text()
    assert "[0] completed" in out and "2.0s" in out and "skipped: budget exhausted" in out
    assert "m1" in out and "synthesis" in out and "p-model" in out and "0.003100" in out
    assert "tier 2" not in out  # the skipped subtask made no call
