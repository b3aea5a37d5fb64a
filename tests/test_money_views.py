"""Cost views that agree: every breakdown of a task (the snapshot's parts, the CLI's
tables, /v1/costs by tier and by model) adds up to the task's total, the synthesis
included; calls booked at their worst case (lost or canceled in flight) are counted
and shown as such; money leaves every door rounded to the micro-dollar; a plan of one
subtask answers with that subtask's result, with no synthesis call."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import httpx
import pytest
from rich.console import Console

from compound.cli.live import cost_parts, cost_table, render_snapshot
from compound.core.money import money_shown, shown_usd
from compound.core.settings import ModelConfig, Settings
from compound.simulator import Simulator
from compound.store.base import RunStore
from compound.store.models import TaskStatus
from compound.store.values import Reservation, Settlement
from tests.fixtures.served import Served
from tests.fixtures.sim import sim_model_configs
from tests.test_doors_stream import chat, held
from tests.test_store import planned, req

PROMPT = "Compare SQLite and PostgreSQL for a small team and recommend one"  # the simulator plans 3+ subtasks
ONE_STEP = "Explain quicksort"  # the simulator plans it as one subtask
MICRO = 1e-6


def _table_text(snap: dict[str, Any]) -> str:
    console = Console(record=True, width=200)
    console.print(cost_table(snap))
    return console.export_text()


def _table_rows(text: str, title: str) -> dict[str, float]:
    """The cost column of one of the CLI's tables, by row name."""
    block = text.split(title, 1)[1]
    rows: dict[str, float] = {}
    for line in block.splitlines()[3:]:
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) < 3 or not re.fullmatch(r"\d+\.\d{6}", cells[-1]):
            if rows:
                break
            continue
        rows[cells[0]] = float(cells[-1])
    return rows


def _parts_total(snap: dict[str, Any]) -> float:
    total: float = sum(p["cost_usd"] for _, _, p in cost_parts(snap))
    return total


# -- pure ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "shown"), [
    (0.004481000000000001, 0.004481),
    (0.0074739999999, 0.007474),
    (1.23456749, 1.234567),
    (2.5e-7, 0.0),
    (-1e-9, 0.0),  # never -0.0
    (12.0, 12.0),
])
def test_money_is_shown_to_the_micro_dollar(value: float, shown: float) -> None:
    got = shown_usd(value)
    assert got == shown and str(got) != "-0.0"


def test_money_fields_are_rounded_at_any_depth_and_nothing_else() -> None:
    data = {"total_cost_usd": 0.1 + 0.2, "cost": 1 / 3, "tokens": 1 / 3, "subtasks": [{"cost_usd": 2 / 3}],
            "planner": {"worst_case": {"calls": 1, "cost_usd": 0.004481000000000001}}, "name_usd": "text"}
    assert money_shown(data) == {"total_cost_usd": 0.3, "cost": 0.333333, "tokens": 1 / 3,
                                 "subtasks": [{"cost_usd": 0.666667}],
                                 "planner": {"worst_case": {"calls": 1, "cost_usd": 0.004481}}, "name_usd": "text"}


# -- the store's snapshot -----------------------------------------------------------------

async def test_worst_case_bookings_are_counted_per_part_and_per_task(any_store: RunStore) -> None:
    task_id = await planned(any_store, n=2)
    # the planner's call in flight when the process died: lost at its worst case
    await any_store.reserve([req(task_id, None, 0.011548, kind="planner", tier=None)])
    assert await any_store.recover(task_id) == 1
    # subtask 0 answered; subtask 1's call was canceled in flight
    (res,) = await any_store.reserve([req(task_id, 0, 0.2)])
    assert isinstance(res, Reservation)
    await any_store.settle(task_id, res, 0, Settlement(status="ok", cost_usd=0.0031, input_tokens=40,
                                                       output_tokens=12, complete_with="done"))
    await any_store.reserve([req(task_id, 1, 0.0425)])
    await any_store.request_cancel(task_id)
    await any_store.cancel_open(task_id)
    snap = await any_store.snapshot(task_id)
    assert snap["worst_case"] == {"calls": 2, "cost_usd": pytest.approx(0.011548 + 0.0425)}
    assert snap["planner"]["worst_case"] == {"calls": 1, "cost_usd": 0.011548}
    assert snap["planner"]["calls"] == 1 and snap["planner"]["input_tokens"] == 0
    first, second = snap["subtasks"]
    assert first["worst_case"] is None and first["cost_usd"] == 0.0031
    assert second["worst_case"] == {"calls": 1, "cost_usd": 0.0425}
    assert second["cost_usd"] == 0.0425  # the canceled call is in the subtask's cost
    assert snap["synthesis"] is None
    assert _parts_total(snap) == pytest.approx(snap["total_cost_usd"], abs=3 * MICRO)

    tree = Console(record=True, width=200)
    tree.print(render_snapshot(snap))
    assert "$0.042500 of it booked at the worst case (1 call(s)" in tree.export_text()

    text = _table_text({**snap, "status": TaskStatus.canceled})
    assert "booked at the worst case" in text
    worst = _table_rows(text, "booked at the worst case")
    assert worst == {"planner": 0.011548, "subtask 1": 0.0425}
    assert "worst case: 2 call(s), $0.054048" in text


async def test_a_snapshot_without_worst_case_bookings_says_none(any_store: RunStore) -> None:
    task_id = await planned(any_store, n=1)
    snap = await any_store.snapshot(task_id)
    assert snap["worst_case"] == {"calls": 0, "cost_usd": 0.0}
    assert snap["subtasks"][0]["worst_case"] is None and snap["planner"] is None
    assert "worst case" not in _table_text(snap)


# -- a task end to end --------------------------------------------------------------------

async def test_every_breakdown_sums_to_the_tasks_total(served: Served, sim: Simulator) -> None:
    auth = {"Authorization": f"Bearer {served.alice}"}
    async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=60) as http:
        task_id = (await http.post("/v1/tasks", json={"prompt": PROMPT})).json()["id"]
        assert await served.wait(task_id) == TaskStatus.completed
        snap = (await http.get(f"/v1/tasks/{task_id}")).json()
        total = snap["total_cost_usd"]
        assert len(snap["subtasks"]) > 1 and sim.calls("synthesizer")
        synthesis = snap["synthesis"]
        assert synthesis["calls"] == 1 and synthesis["cost_usd"] > 0 and synthesis["worst_case"] is None
        assert synthesis["model"] in served.app.state.settings.tier_models(served.app.state.settings.synthesis_tier)
        n = len(snap["subtasks"]) + 2
        assert _parts_total(snap) == pytest.approx(total, abs=n * MICRO)

        text = _table_text(snap)
        by_tier = _table_rows(text, "cost by tier")
        assert {"planner", "synthesis"} <= set(by_tier) and by_tier["synthesis"] == synthesis["cost_usd"]
        assert sum(by_tier.values()) == pytest.approx(total, abs=n * MICRO)
        assert sum(_table_rows(text, "cost by model").values()) == pytest.approx(total, abs=n * MICRO)
        assert "worst case" not in text

        # alice's only task: her costs by tier and by model are this task's
        for group_by in ("tier", "model"):
            costs = (await http.get("/v1/costs", params={"group_by": group_by})).json()
            assert costs["total_usd"] == pytest.approx(total, abs=MICRO)
            assert sum(g["cost_usd"] for g in costs["groups"]) == pytest.approx(total, abs=n * MICRO)
        tiers = {g["key"]: g for g in (await http.get("/v1/costs", params={"group_by": "tier"})).json()["groups"]}
        assert tiers["synthesis"]["cost_usd"] == synthesis["cost_usd"] and tiers["synthesis"]["calls"] == 1
        assert tiers["planner"]["cost_usd"] == snap["planner"]["cost_usd"]


async def test_a_one_subtask_plan_answers_with_its_subtasks_result(served: Served, sim: Simulator) -> None:
    auth = {"Authorization": f"Bearer {served.alice}"}
    plan = {"subtasks": [{"description": "Explain quicksort in three sentences", "tier_hint": 1,
                          "depends_on": []}]}
    async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=60) as http:
        task_id = (await http.post("/v1/tasks", json={"prompt": ONE_STEP, "plan": plan})).json()["id"]
        assert await served.wait(task_id) == TaskStatus.completed
        snap = (await http.get(f"/v1/tasks/{task_id}")).json()
    assert snap["result"] and snap["result"] == snap["subtasks"][0]["result"]
    assert snap["synthesis"] is None and not sim.calls("synthesizer")
    rows = await served.app.state.store.ledger_rows(task_id)
    assert [r["kind"] for r in rows] == ["subtask"]
    assert snap["total_cost_usd"] == snap["subtasks"][0]["cost_usd"]


async def test_a_streamed_one_subtask_answer_reaches_the_chat_client(served: Served, sim: Simulator) -> None:
    with held(sim, ONE_STEP) as release:
        stream = await chat(served, served.alice).chat.completions.create(
            model="compound", messages=[{"role": "user", "content": ONE_STEP}], stream=True)
        first = await stream.__anext__()
        release.set()
    deltas = [ch.choices[0].delta.content async for ch in stream if ch.choices and ch.choices[0].delta.content]
    snap = await served.app.state.store.snapshot(first.id)
    assert snap["status"] == TaskStatus.completed and len(snap["subtasks"]) == 1
    assert "".join(deltas) == snap["result"] == snap["subtasks"][0]["result"]
    assert len(deltas) > 1  # streamed as the subtask's call wrote it
    assert not sim.calls("synthesizer")


# -- money on every door ------------------------------------------------------------------

def _money(value: Any, key: str = "", path: str = "") -> list[tuple[str, float]]:
    """Every money value in a JSON document: (where, value)."""
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in _money(v, str(k), f"{path}.{k}")]
    if isinstance(value, list):
        return [m for i, v in enumerate(value) for m in _money(v, key, f"{path}[{i}]")]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            key.endswith("_usd") or key in ("cost", "total_cost")):
        return [(path, float(value))]
    return []


def _decimals(value: float) -> int:
    return max(0, -int(Decimal(repr(value)).as_tuple().exponent))


@pytest.fixture
def sim_settings(sim: Simulator, sqlite_url: str) -> Settings:
    """Prices whose sums carry float noise (0.1 + 0.2 is 0.30000000000000004)."""
    noisy = {m: ModelConfig(api_base=c.api_base, input_cost_per_token=1.1e-7, output_cost_per_token=3.3e-7)
             for m, c in sim_model_configs(sim.url).items()}  # type: ignore[attr-defined]
    return Settings(database_url=sqlite_url, planner_model="anthropic/claude-haiku-4-5",
                    tier1_models=["anthropic/claude-haiku-4-5"], tier2_models=["anthropic/claude-sonnet-4-5"],
                    tier3_models=["anthropic/claude-opus-4-5"], models=noisy, retry_initial_wait_s=0.0,
                    retry_max_wait_s=0.0, call_timeout_s=10.0)


async def test_money_on_every_door_has_at_most_six_decimals(served: Served, sim: Simulator) -> None:
    from mcp import ClientSession

    from tests.test_doors_mcp import call, mcp_http

    auth = {"Authorization": f"Bearer {served.alice}"}
    seen: dict[str, list[tuple[str, float]]] = {}
    plan = {"subtasks": [{"description": "Facts on SQLite", "tier_hint": 1, "depends_on": []},
                         {"description": "Compare them", "tier_hint": 2, "depends_on": [0]}]}
    async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=120) as http:
        task_id = (await http.post("/v1/tasks", json={"prompt": PROMPT})).json()["id"]
        assert await served.wait(task_id) == TaskStatus.completed
        # the store keeps full precision: the noise is there to be rounded
        raw = [r["cost_usd"] for r in await served.app.state.store.ledger_rows(task_id)]
        assert any(_decimals(c) > 6 for c in raw) or _decimals(sum(raw)) > 6

        # the service's own routes and the Symbiont routes
        for name, path, params in [
                ("snapshot", f"/v1/tasks/{task_id}", None), ("list", "/v1/tasks", None),
                ("costs", "/v1/costs", None), ("costs by tier", "/v1/costs", {"group_by": "tier"}),
                ("costs by model", "/v1/costs", {"group_by": "model"}),
                ("costs by day", "/v1/costs", {"group_by": "day"}), ("summary", "/v1/costs/summary", None),
                ("symbiont progress", f"/task/{task_id}/progress", None), ("symbiont recent", "/tasks/recent", None)]:
            r = await http.get(path, params=params)
            assert r.status_code == 200, (name, r.text)
            seen[name] = _money(r.json())
        events = (await http.get(f"/v1/tasks/{task_id}/events")).text
        seen["events"] = [m for line in events.splitlines() if line.startswith("data:")
                          for m in _money(json.loads(line[5:]))]
        r = await http.post("/v1/plans/validate", json={"plan": plan})
        seen["plan check"] = _money(r.json())

        # the OpenAI door, whole and streamed
        r = await http.post("/v1/chat/completions", json={"model": "compound",
                                                          "messages": [{"role": "user", "content": PROMPT}]})
        assert r.status_code == 200, r.text
        seen["openai"] = _money(r.json())
        streamed: list[tuple[str, float]] = []
        async with http.stream("POST", "/v1/chat/completions", json={
                "model": "compound", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}) as s:
            async for line in s.aiter_lines():
                if line.startswith(": compound "):
                    streamed += _money(json.loads(line[len(": compound "):]))
                elif line.startswith("data: {"):
                    streamed += _money(json.loads(line[6:]))
        seen["openai streamed"] = streamed

        # the A2A door (JSON-RPC over HTTP)
        r = await http.post("/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {
            "message": {"kind": "message", "messageId": "m1", "role": "user",
                        "parts": [{"kind": "text", "text": PROMPT}]}}})
        assert r.status_code == 200 and "result" in r.json(), r.text
        seen["a2a"] = _money(r.json())
        r = await http.post("/a2a", json={"jsonrpc": "2.0", "id": 2, "method": "tasks/get",
                                          "params": {"id": r.json()["result"]["id"]}})
        seen["a2a get"] = _money(r.json())

    # the MCP door
    async with mcp_http(served, served.alice) as session:
        assert isinstance(session, ClientSession)
        seen["mcp get_task"] = _money(await call(session, "get_task", {"task_id": task_id}))
        seen["mcp list_tasks"] = _money(await call(session, "list_tasks", {}))
        seen["mcp estimate_cost"] = _money(await call(session, "estimate_cost", {"plan": plan}))
        seen["mcp submit_task"] = _money(await call(session, "submit_task", {"prompt": PROMPT, "wait": True}))

    for door, values in seen.items():
        assert values, f"{door}: no money value seen"
        noisy = [(where, v) for where, v in values if _decimals(v) > 6]
        assert not noisy, f"{door}: money with more than 6 decimals: {noisy}"
