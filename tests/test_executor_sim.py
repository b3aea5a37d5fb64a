"""The executor end to end over real HTTP: the simulator speaks both providers' wire
formats and litellm parses them, as in production."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from sqlmodel import Session, col

from compound.core.settings import Settings
from compound.executor.service import Executor
from compound.llm.litellm_client import LiteLLMClient
from compound.llm.pricing import price_of
from compound.simulator import Failure, Simulator
from compound.store import open_store
from compound.store.models import LedgerEntry


async def test_a_task_runs_over_http_with_exact_costs(sim: Simulator, sim_settings: Settings,
                                                      sim_client: LiteLLMClient) -> None:
    sim.script.latency = lambda _m, kind, _t: 0.5 if kind == "worker" else 0.0
    store = open_store(sim_settings.database_url)
    await store.open()
    engine = store.engine
    ex = Executor(settings=sim_settings, store=store, client=sim_client)
    task = await store.create_task(prompt="survey the options and compare prices and check reviews",
                                   budget_usd=1.0)
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert snap["status"] == "completed", snap["error"]
    assert len(snap["subtasks"]) == 4
    # the three independent subtasks overlapped in time at the provider
    workers = sim.calls("worker")
    first3 = sorted(w["at"] for w in workers[:3])
    assert first3[-1] - first3[0] < 0.5  # the third arrived before the first could answer
    # the joining subtask's request carried the three results
    assert all(f'<dependency index="{i}">' in workers[-1]["text"] for i in range(3))
    assert "Final answer built from 4 results" in snap["result"]
    with Session(engine) as s:
        rows = list(s.scalars(select(LedgerEntry).where(col(LedgerEntry.task_id) == task.id)))
    assert len(rows) == 1 + 4 + 1 and {r.status for r in rows} == {"ok"}
    for r in rows:
        p = price_of(r.model, sim_settings)
        assert r.cost_usd == pytest.approx(r.input_tokens * p.input + r.output_tokens * p.output, abs=1e-12)
    assert snap["total_cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows), abs=1e-12)
    await store.close()


async def test_retries_and_fallback_over_http(sim: Simulator, sim_settings: Settings,
                                              sim_client: LiteLLMClient) -> None:
    settings = sim_settings.model_copy(update={"max_attempts": 2})
    store = open_store(settings.database_url)
    await store.open()
    sim.fail(Failure(529, kind="worker", model="claude-haiku-4-5"),
             Failure(503, kind="worker", model="claude-haiku-4-5"))
    ex = Executor(settings=settings, store=store, client=sim_client)
    plan = {"subtasks": [{"description": "only step", "tier_hint": 1, "depends_on": []}]}
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan)
    t0 = time.perf_counter()
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    sub = snap["subtasks"][0]
    assert snap["status"] == "completed"
    assert sub["model"] == "openai/gpt-4.1-mini" and sub["attempts"] == 3
    assert [c["model"] for c in sim.calls("worker")] == ["claude-haiku-4-5", "claude-haiku-4-5", "gpt-4.1-mini"]
    assert time.perf_counter() - t0 < 5
    await store.close()
