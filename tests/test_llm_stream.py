"""The synthesis call streamed through the executor: a front door's hook sees the
answer's pieces as they arrive, and the ledger accounts the streamed call as any other."""

from __future__ import annotations

import pytest
from compound.store.tasks import create_task, task_snapshot
from sqlalchemy import select
from sqlmodel import Session

from compound.core.settings import Settings
from compound.executor.service import Executor
from compound.llm import LLMClient
from compound.llm.pricing import price_of
from compound.llm.simulator import Simulator
from compound.store.db import create_all, make_engine
from compound.store.models import LedgerEntry


async def test_the_synthesis_call_streams_to_the_hook(sim: Simulator, sim_settings: Settings,
                                                      sim_client: LLMClient) -> None:
    engine = make_engine(sim_settings.database_url)
    create_all(engine)
    ex = Executor(settings=sim_settings, engine=engine, client=sim_client)
    pieces: list[tuple[str, str]] = []
    ex.on_synthesis_delta = lambda task_id, text: pieces.append((task_id, text))
    plan = {"subtasks": [{"description": "find a", "tier_hint": 1, "depends_on": []},
                         {"description": "find b", "tier_hint": 1, "depends_on": []}]}
    task = create_task(engine, prompt="find a and b", budget_usd=1.0, plan_in=plan)
    await ex.run_task(task.id)
    snap = task_snapshot(engine, task.id)
    assert snap["status"] == "completed", snap["error"]
    assert len(pieces) > 2 and {t for t, _ in pieces} == {task.id}
    assert "".join(text for _, text in pieces) == snap["result"]
    synth = sim.calls("synthesizer")
    assert len(synth) == 1 and synth[0]["body"]["stream"] is True
    assert all(not c["body"].get("stream") for c in sim.calls("worker"))  # only the synthesis streams
    with Session(engine) as s:
        rows = list(s.exec(select(LedgerEntry).where(LedgerEntry.task_id == task.id)).scalars())  # type: ignore[call-overload]
    row = next(r for r in rows if r.kind == "synthesis")
    p = price_of(row.model, sim_settings)
    assert row.status == "ok" and row.output_tokens > 0
    assert row.cost_usd == pytest.approx(row.input_tokens * p.input + row.output_tokens * p.output, abs=1e-12)
    await ex.stop()
    engine.dispose()
