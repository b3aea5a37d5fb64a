"""Property tests over random DAGs: every subtask runs once, never before its
dependencies, and the final statuses are consistent."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from compound.core.errors import ProviderError
from compound.core.settings import Settings
from compound.executor.service import Executor
from compound.llm.base import Message, Price
from compound.simulator import answer_for, prompt_kind
from compound.store import open_store
from tests.fixtures.fakes import FakeLLM


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[list[int]], set[int]]:
    n = draw(st.integers(1, 12))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    failing = draw(st.sets(st.integers(0, n - 1), max_size=2))
    return deps, failing


async def _run(deps: list[list[int]], failing: set[int], seed: int) -> None:
    rng = random.Random(seed)
    delays = {i: rng.choice((0, 0.001, 0.003)) for i in range(len(deps))}
    order: list[tuple[str, int]] = []

    async def answer(model: str, messages: list[Message]) -> str | ProviderError:
        text = messages[-1]["content"]
        if prompt_kind(messages[0]["content"]) != "worker":
            return answer_for(prompt_kind(messages[0]["content"]), text, 6)
        i = int(text.split("<subtask>\nstep ", 1)[1].split("\n", 1)[0])
        order.append(("start", i))
        await asyncio.sleep(delays[i])
        order.append(("end", i))
        if i in failing:
            return ProviderError("boom", status=400, transient=False)
        return f"r{i}"

    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"sqlite:///{Path(tmp) / 'p.db'}") as store:
            ex = Executor(settings=Settings(max_subtasks=50, max_replans=0), store=store, client=FakeLLM(answer=answer),
                          price_of=lambda _m: Price(1e-6, 5e-6))
            plan = {"subtasks": [{"description": f"step {i}", "tier_hint": 1 + i % 3, "depends_on": d}
                                 for i, d in enumerate(deps)]}
            task = await store.create_task(prompt="p", budget_usd=10.0, plan_in=plan)
            await ex.run_task(task.id)
            snap = await store.snapshot(task.id)

    starts = [i for kind, i in order if kind == "start"]
    assert len(starts) == len(set(starts)), "a subtask ran twice"
    ended_at = {i: k for k, (kind, i) in enumerate(order) if kind == "end"}
    for k, (kind, i) in enumerate(order):
        if kind == "start":
            assert all(ended_at.get(d, 1 << 30) < k for d in deps[i]), f"{i} started before a dependency ended"
    status = {s["index"]: s["status"] for s in snap["subtasks"]}
    for i, d in enumerate(deps):
        if i in failing and status[i] != "skipped":
            assert status[i] == "failed"
        if status[i] == "completed":
            assert all(status[x] == "completed" for x in d)
            assert i in starts
        if status[i] == "skipped":
            assert i not in starts and any(status[x] != "completed" for x in d)
    assert all(s in ("completed", "failed", "skipped") for s in status.values())
    n_done = sum(s == "completed" for s in status.values())
    expected = "completed" if n_done == len(deps) else ("partial" if n_done else "failed")
    assert snap["status"] == expected


@settings(max_examples=30, deadline=None)
@given(dags(), st.integers(0, 1000))
def test_random_dags_run_each_subtask_once_in_dependency_order(dag: tuple[list[list[int]], set[int]],
                                                               seed: int) -> None:
    deps, failing = dag
    asyncio.run(_run(deps, failing, seed))
