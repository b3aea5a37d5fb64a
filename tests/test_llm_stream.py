"""The synthesis call streamed through the executor while a front door listens: every listener sees the
answer's pieces as they arrive, and the ledger accounts the streamed call as any other."""

from __future__ import annotations

import pytest

from compound.core.settings import Settings
from compound.executor.answers import AnswerPiece
from compound.executor.service import Executor
from compound.llm import LLMClient
from compound.llm.pricing import price_of
from compound.simulator import Simulator
from compound.store import open_store


async def test_the_synthesis_call_streams_to_the_hook(sim: Simulator, sim_settings: Settings,
                                                      sim_client: LLMClient) -> None:
    async with open_store(sim_settings.database_url) as store:
        ex = Executor(settings=sim_settings, store=store, client=sim_client, stream_answers=True)
        plan = {"subtasks": [{"description": "find a", "tier_hint": 1, "depends_on": []},
                             {"description": "find b", "tier_hint": 1, "depends_on": []}]}
        task = await store.create_task(prompt="find a and b", budget_usd=1.0, plan_in=plan)
        first: list[AnswerPiece] = []
        second: list[AnswerPiece] = []
        with ex.answers.listen(task.id, first.append), ex.answers.listen(task.id, second.append):
            await ex.run_task(task.id)
        assert ex.answers.listening(task.id) == 0
        snap = await store.snapshot(task.id)
        assert snap["status"] == "completed", snap["error"]
        assert len(first) > 2 and first == second  # every listener hears every piece
        assert {p.attempt for p in first} == {1}
        assert "".join(p.text for p in first) == snap["result"]
        synth = sim.calls("synthesizer")
        assert len(synth) == 1 and synth[0]["body"]["stream"] is True
        assert all(not c["body"].get("stream") for c in sim.calls("worker"))  # only the synthesis streams
        rows = await store.ledger_rows(task.id)
        row = next(r for r in rows if r["kind"] == "synthesis")
        p = price_of(row["model"], sim_settings)
        assert row["status"] == "ok" and row["output_tokens"] > 0
        assert row["cost_usd"] == pytest.approx(row["input_tokens"] * p.input + row["output_tokens"] * p.output,
                                                abs=1e-12)
        await ex.stop()


async def test_with_no_listener_the_synthesis_call_is_not_streamed(sim: Simulator, sim_settings: Settings,
                                                                   sim_client: LLMClient) -> None:
    async with open_store(sim_settings.database_url) as store:
        ex = Executor(settings=sim_settings, store=store, client=sim_client, stream_answers=True)
        plan = {"subtasks": [{"description": "find a", "tier_hint": 1, "depends_on": []},
                             {"description": "find b", "tier_hint": 1, "depends_on": []}]}
        task = await store.create_task(prompt="find a and b", budget_usd=1.0, plan_in=plan)
        await ex.run_task(task.id)
        snap = await store.snapshot(task.id)
        assert snap["status"] == "completed", snap["error"]
        synth = sim.calls("synthesizer")
        assert len(synth) == 1 and not synth[0]["body"].get("stream")  # nobody listened: one plain call
        await ex.stop()
