"""The executor against a fake at the LLM seam: eager order, overlap, prompts, exact
accounting, failures, budgets, retries, fallbacks, cancel and resume."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import Session, col

from compound.core.money import worst_case_usd
from compound.core.settings import Settings
from compound.executor.service import Executor
from compound.llm.base import Message, Price
from compound.prompts import render
from compound.simulator import answer_for, prompt_kind
from compound.store.base import RunStore
from compound.store.models import LedgerEntry, Subtask, Task
from tests.fixtures.fakes import FakeLLM, transient

PRICE = Price(input=1e-6, output=5e-6)


def kind_answer(model: str, messages: list[Message]) -> str:
    return answer_for(prompt_kind(messages[0]["content"]), messages[-1]["content"], 6)


def plan(*subtasks: tuple[str, list[int]], tier: int = 1) -> dict[str, Any]:
    return {"reasoning": "test", "subtasks": [
        {"description": d, "tier_hint": tier, "depends_on": deps} for d, deps in subtasks]}


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"tier1_models": ["anthropic/claude-haiku-4-5"],
                            "tier2_models": ["anthropic/claude-sonnet-4-5"],
                            "retry_initial_wait_s": 0.5, "retry_max_wait_s": 8}
    base.update(kw)
    return Settings(**base)


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def executor(store: RunStore, fake: FakeLLM, sleep: Recorder | None = None, **kw: Any) -> Executor:
    return Executor(settings=settings(**kw), store=store, client=fake, price_of=lambda _m: PRICE,
                    sleep=sleep or Recorder())


def ledger(store: RunStore, task_id: str) -> list[LedgerEntry]:
    with Session(store.engine) as s:
        return list(s.scalars(select(LedgerEntry).where(col(LedgerEntry.task_id) == task_id)))


def worker_calls(fake: FakeLLM) -> dict[str, Any]:
    out = {}
    for c in fake.calls:
        if prompt_kind(c.messages[0]["content"]) == "worker":
            text = c.messages[-1]["content"]
            out[text.split("<subtask>\n", 1)[1].split("\n</subtask>", 1)[0]] = c
    return out


async def test_a_planned_task_runs_to_completion_with_exact_accounting(any_store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(any_store, fake)
    task = await any_store.create_task(prompt="find a and find b and compare", budget_usd=1.0)
    await ex.run_task(task.id)
    snap = await any_store.snapshot(task.id)
    assert snap["status"] == "completed"
    assert snap["result"].startswith("Final answer built from 4 results")
    assert [s["status"] for s in snap["subtasks"]] == ["completed"] * 4
    assert snap["planner"]["model"] == "anthropic/claude-haiku-4-5"
    rows = ledger(any_store, task.id)
    assert [r.kind for r in rows].count("planner") == 1 and [r.kind for r in rows].count("synthesis") == 1
    assert all(r.status == "ok" for r in rows)
    assert snap["total_cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows), abs=1e-12)
    # each call's cost is the reported usage x price
    assert sum(r.cost_usd for r in rows) == pytest.approx(
        sum(PRICE.input * r.input_tokens + PRICE.output * r.output_tokens for r in rows), abs=1e-12)
    assert sum(s["cost_usd"] for s in snap["subtasks"]) + snap["planner"]["cost_usd"] < snap["total_cost_usd"]
    with Session(any_store.engine) as s:
        t = s.get(Task, task.id)
        assert t is not None and t.reserved_usd == pytest.approx(0.0, abs=1e-12)
        assert set(t.prompt_versions or {}) == {"decompose", "subtask", "synthesize", "check", "replan"}


async def test_dependents_wait_and_independents_overlap(store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer, latency=lambda _m, msgs: 0.05 if "worker" in msgs[0]["content"] else 0)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0,
                       plan_in=plan(("A", []), ("B", []), ("C", [0]), ("D", [1, 2])))
    await ex.run_task(task.id)
    calls = worker_calls(fake)
    a, b, c, d = calls["A"], calls["B"], calls["C"], calls["D"]
    assert a.started < b.ended and b.started < a.ended  # A and B overlap
    assert c.started >= a.ended  # C after its dependency
    assert d.started >= max(b.ended, c.ended)
    # a dependent's prompt carries its dependencies' results, as data
    assert '<dependency index="0">\nResult of subtask: A' in c.messages[-1]["content"]
    assert '<dependency index="1">' in d.messages[-1]["content"] and '<dependency index="2">' in d.messages[-1]["content"]
    synth = next(x for x in fake.calls if prompt_kind(x.messages[0]["content"]) == "synthesizer")
    for letter in "ABCD":
        assert f"Result of subtask: {letter}" in synth.messages[-1]["content"]


async def test_a_failure_skips_dependents_and_the_rest_goes_on(store: RunStore) -> None:
    def answer(model: str, msgs: list[Message]) -> Any:
        if "<subtask>\nB\n" in msgs[-1]["content"]:
            return transient(400)
        return kind_answer(model, msgs)

    fake = FakeLLM(answer=answer)
    ex = executor(store, fake, max_replans=0)
    task = await store.create_task(prompt="p", budget_usd=1.0,
                       plan_in=plan(("A", []), ("B", []), ("C", [1]), ("D", [2]), ("E", [0])))
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    st = {s["description"]: s for s in snap["subtasks"]}
    assert snap["status"] == "partial"
    assert st["A"]["status"] == st["E"]["status"] == "completed"
    assert st["B"]["status"] == "failed" and st["B"]["attempts"] == 1  # 400 is permanent: no retry
    assert st["C"]["status"] == "skipped" and st["C"]["error"] == "skipped: dependency 1 failed"
    assert st["D"]["error"] == "skipped: dependency 2 was skipped (dependency 1 failed)"
    assert "C" not in worker_calls(fake) and "D" not in worker_calls(fake)
    assert snap["result"] is not None


async def test_nothing_completed_means_failed(store: RunStore) -> None:
    fake = FakeLLM(answer=lambda m, msgs: transient(401) if "worker" in msgs[0]["content"] else kind_answer(m, msgs))
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", []), ("B", [0])))
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert snap["status"] == "failed" and "no subtask completed" in snap["error"]


async def test_transient_errors_are_retried_with_backoff_and_retry_after(store: RunStore) -> None:
    slow = transient(429)
    slow.retry_after_s = 7.0
    fake = FakeLLM(answer=kind_answer, queue=[slow, transient(503), transient(529)])
    sleep = Recorder()
    ex = executor(store, fake, sleep)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", [])))
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert snap["status"] == "completed"
    assert snap["subtasks"][0]["attempts"] == 4
    assert len(sleep.waits) == 3 and sleep.waits[0] >= 7.0  # Retry-After wins when longer
    rows = [r for r in ledger(store, task.id) if r.kind == "subtask"]
    assert [r.status for r in rows] == ["error", "error", "error", "ok"]
    assert [r.attempt for r in rows] == [1, 2, 3, 4]


async def test_a_fallback_model_answers_when_the_primary_keeps_failing(store: RunStore) -> None:
    def answer(model: str, msgs: list[Message]) -> Any:
        if model == "anthropic/claude-haiku-4-5" and "worker" in msgs[0]["content"]:
            return transient(503, model)
        return kind_answer(model, msgs)

    fake = FakeLLM(answer=answer)
    ex = executor(store, fake, tier1_models=["anthropic/claude-haiku-4-5", "openai/gpt-4.1-mini"], max_attempts=3)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", [])))
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    sub = snap["subtasks"][0]
    assert snap["status"] == "completed"
    assert sub["model"] == "openai/gpt-4.1-mini" and sub["attempts"] == 4
    assert [r.model for r in ledger(store, task.id) if r.kind == "subtask"] == \
        ["anthropic/claude-haiku-4-5"] * 3 + ["openai/gpt-4.1-mini"]


def _worst_cases(prompt: str, p: dict[str, Any], max_tokens: int) -> list[float]:
    return [worst_case_usd(render("subtask", request=prompt, description=s["description"], dependencies=[]),
                           max_tokens, PRICE) for s in p["subtasks"]]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0, 3.0])
async def test_budgets_are_never_exceeded(store: RunStore, fraction: float) -> None:
    p = plan(("A", []), ("B", []), ("C", []), ("D", [0, 1, 2]))
    independent = sum(_worst_cases("p", p, 1024)[:3])
    budget = max(1e-9, independent * fraction)
    # A, B and C are in flight together, so their worst cases are reserved together
    fake = FakeLLM(answer=kind_answer, latency=lambda _m, msgs: 0.05 if "worker" in msgs[0]["content"] else 0)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=budget, plan_in=p)
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    rows = ledger(store, task.id)
    assert snap["total_cost_usd"] <= budget + 1e-12
    assert snap["total_cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows), abs=1e-12)
    skipped = [s for s in snap["subtasks"] if s["status"] == "skipped"]
    if fraction < 1.0:
        assert skipped and all("budget" in s["error"] for s in skipped)
        assert "budget" in snap["error"]
        assert snap["status"] in ("partial", "failed")
    if fraction == 0.0:
        assert snap["status"] == "failed" and not rows
    if fraction >= 3.0:
        assert snap["status"] == "completed"


async def test_a_task_that_cannot_plan_within_its_budget_fails_saying_so(store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=0.0001)
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert snap["status"] == "failed" and "could not plan within the budget of $0.0001" in snap["error"]
    assert fake.calls == []


async def test_cancel_mid_run_stops_further_calls(store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer, latency=lambda _m, msgs: 0.2 if "worker" in msgs[0]["content"] else 0)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0,
                       plan_in=plan(("A", []), ("B", [0]), ("C", [1])))
    ex.submit(task.id)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if worker_calls(fake):
            break
    await ex.cancel(task.id)
    n = len(fake.calls)
    await asyncio.sleep(0.3)
    assert len(fake.calls) == n == 1
    snap = await store.snapshot(task.id)
    assert snap["status"] == "canceled"
    assert [s["status"] for s in snap["subtasks"]] == ["canceled"] * 3
    rows = ledger(store, task.id)
    assert [r.status for r in rows] == ["canceled"]
    assert snap["total_cost_usd"] == pytest.approx(rows[0].cost_usd) and rows[0].cost_usd > 0
    from compound.core.errors import Conflict

    with pytest.raises(Conflict):
        await ex.cancel(task.id)


async def test_resume_never_calls_a_completed_subtask_again(any_store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(any_store, fake)
    task = await any_store.create_task(prompt="p", budget_usd=1.0,
                       plan_in=plan(("A", []), ("B", []), ("C", [0, 1])))
    # The state a crash leaves: A completed, B in flight with an open reservation, C pending.
    await ex.run_task(task.id)  # run it, then rewind it by hand to a crashed state
    with Session(any_store.engine) as s:
        subs = {x.index: x for x in s.scalars(select(Subtask).where(col(Subtask.task_id) == task.id))}
        subs[1].status, subs[1].result = "running", None
        subs[2].status, subs[2].result = "pending", None
        t = s.get(Task, task.id)
        assert t is not None
        t.status, t.result, t.completed_at = "executing", None, None
        s.add(LedgerEntry(task_id=task.id, kind="subtask", subtask_index=1, model="m", status="reserved",
                          reserved_usd=0.01))
        t.reserved_usd = 0.01
        s.commit()
    before = len(fake.calls)
    ex2 = executor(any_store, fake)
    assert task.id in await ex2.start()
    await ex2.wait(task.id, timeout=60)
    new = list(fake.calls[before:])
    subjects = [c.messages[-1]["content"] for c in new if "worker" in c.messages[0]["content"]]
    assert len(subjects) == 2 and not any("<subtask>\nA\n" in x for x in subjects)
    snap = await any_store.snapshot(task.id)
    assert snap["status"] == "completed"
    rows = ledger(any_store, task.id)
    assert [r.status for r in rows].count("lost") == 1
    assert snap["total_cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows), abs=1e-12)
    await ex2.stop()


async def test_held_for_approval_then_approved(store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(store, fake)
    task = await store.create_task(prompt="a and b", budget_usd=1.0, approve=False)
    await ex.run_task(task.id)
    assert (await store.snapshot(task.id))["status"] == "planned"
    assert len(fake.calls) == 1
    await ex.approve(task.id)
    assert await ex.wait(task.id, timeout=60) == "completed"


async def test_events_record_every_transition_in_order(store: RunStore) -> None:
    from compound.store.models import TaskEvent

    fake = FakeLLM(answer=kind_answer)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", []), ("B", [0])))
    await ex.run_task(task.id)
    with Session(store.engine) as s:
        events = list(s.scalars(select(TaskEvent).where(col(TaskEvent.task_id) == task.id)
                                 .order_by(col(TaskEvent.seq))))
        count = s.scalars(select(func.count()).select_from(TaskEvent)).one()
    assert [e.seq for e in events] == list(range(1, len(events) + 1)) and count == len(events)
    task_states = [e.data["status"] for e in events if e.kind == "task"]
    assert task_states == ["queued", "planning", "planned", "executing", "completed"]
    sub_a = [e.data["status"] for e in events if e.kind == "subtask" and e.data["index"] == 0]
    assert sub_a == ["running", "completed"]
    assert json.dumps(events[-1].data)


async def test_a_users_daily_budget_caps_all_their_tasks(any_store: RunStore) -> None:
    store = any_store
    from compound.llm.base import Completion, Usage
    from compound.store.models import User

    with Session(store.engine, expire_on_commit=False) as s:
        user = User(name="thrifty")
        s.add(user)
        s.commit()
    p = plan(("A", []))
    one_call = _worst_cases("p", p, 1024)[0]

    def dear(model: str, messages: list[Message]) -> Completion:  # each call really costs half a worst case
        return Completion(text=kind_answer(model, messages), model=model, usage=Usage(10, 10),
                          cost_usd=one_call / 2)

    daily = one_call * 2.2
    ex = executor(store, FakeLLM(answer=dear), user_daily_budget_usd=daily)
    snaps = []
    for _ in range(4):
        task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=p, user_id=user.id)
        await ex.run_task(task.id)
        snaps.append(await store.snapshot(task.id))
    spent = sum(r.cost_usd for t in snaps for r in ledger(store, t["id"]))
    assert spent <= daily + 1e-12  # every task had $1 of its own: the day's cap held
    assert snaps[0]["subtasks"][0]["status"] == "completed"
    last = snaps[-1]
    assert last["status"] == "failed" and "daily budget" in last["subtasks"][0]["error"]


class InFlight:
    """Counts concurrent calls, overall and per model."""

    def __init__(self, slow: float = 0.02) -> None:
        self.slow = slow  # seconds a call named "block" takes
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total = 0
        self.peak_total = 0
        self.order: list[str] = []

    async def __call__(self, model: str, messages: list[Message]) -> str:
        if "worker" not in messages[0]["content"]:
            return kind_answer(model, messages)
        self.now[model] = self.now.get(model, 0) + 1
        self.total += 1
        self.peak[model] = max(self.peak.get(model, 0), self.now[model])
        self.peak_total = max(self.peak_total, self.total)
        name = messages[-1]["content"].split("<subtask>\n", 1)[1].split("\n", 1)[0]
        self.order.append(name)
        await asyncio.sleep(self.slow if name == "block" else 0.02)
        self.now[model] -= 1
        self.total -= 1
        return "ok"


async def test_calls_in_flight_are_bounded_across_tasks_and_per_model(store: RunStore) -> None:
    from compound.core.settings import ModelConfig

    counter = InFlight()
    ex = executor(store, FakeLLM(answer=counter), max_concurrency=3,
                  tier2_models=["anthropic/claude-sonnet-4-5"],
                  models={"anthropic/claude-sonnet-4-5": ModelConfig(max_concurrency=1)})
    wide = plan(*[(f"s{i}", []) for i in range(6)])
    dear = {"subtasks": [{"description": f"d{i}", "tier_hint": 2, "depends_on": []} for i in range(4)]}
    tasks = [await store.create_task(prompt="p", budget_usd=5.0, plan_in=wide) for _ in range(2)]
    tasks.append(await store.create_task(prompt="p", budget_usd=5.0, plan_in=dear))
    for t in tasks:
        ex.submit(t.id)
    for t in tasks:
        assert await ex.wait(t.id, timeout=60) == "completed"
    assert counter.peak_total == 3
    assert counter.peak["anthropic/claude-sonnet-4-5"] == 1


async def test_free_slots_go_to_the_most_urgent_task_first(store: RunStore) -> None:
    counter = InFlight(slow=0.5)  # both others queue up while "block" holds the only slot
    ex = executor(store, FakeLLM(answer=counter), max_concurrency=1)
    blocker = await store.create_task(prompt="p", budget_usd=5.0, plan_in=plan(("block", [])), priority=2)
    ex.submit(blocker.id)
    for _ in range(100):
        await asyncio.sleep(0.005)
        if counter.order:
            break
    low = await store.create_task(prompt="p", budget_usd=5.0, plan_in=plan(("low", [])), priority=3)
    high = await store.create_task(prompt="p", budget_usd=5.0, plan_in=plan(("high", [])), priority=0)
    ex.submit(low.id)
    await asyncio.sleep(0.05)
    ex.submit(high.id)
    for t in (blocker, low, high):
        await ex.wait(t.id, timeout=60)
    assert counter.order == ["block", "high", "low"]


async def _until(check: Any, what: str, timeout: float = 10.0) -> None:
    """Wait on a state (checked every few ms), failing with what was awaited."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)
    assert check(), what


async def test_a_call_waiting_for_a_slot_holds_no_reservation(store: RunStore) -> None:
    release = asyncio.Event()
    sent: list[str] = []

    async def answer(model: str, messages: list[Message]) -> str:
        if "worker" not in messages[0]["content"]:
            return kind_answer(model, messages)
        name = messages[-1]["content"].split("<subtask>\n", 1)[1].split("\n", 1)[0]
        sent.append(name)
        if name == "block":
            await release.wait()
        return "ok"

    ex = executor(store, FakeLLM(answer=answer), max_concurrency=1)
    blocker = await store.create_task(prompt="p", budget_usd=5.0, plan_in=plan(("block", [])))
    waiting = await store.create_task(prompt="p", budget_usd=5.0, plan_in=plan(("waits", [])))
    try:
        ex.submit(blocker.id)
        await _until(lambda: sent == ["block"], "the blocker holds the only slot")
        ex.submit(waiting.id)
        await store.wait_for_status(waiting.id, frozenset({"executing"}), 10)
        # its call waits for the slot: nothing of the budget is held for it, it is not running
        assert ledger(store, waiting.id) == []
        assert (await store.snapshot(waiting.id))["subtasks"][0]["status"] == "pending"
        await ex.cancel(waiting.id)
        release.set()
        assert await ex.wait(blocker.id, timeout=60) == "completed"
    finally:
        release.set()
        await ex.stop()
    assert "waits" not in sent and ledger(store, waiting.id) == []
    snap = await store.snapshot(waiting.id)
    assert snap["status"] == "canceled" and snap["total_cost_usd"] == 0.0


async def test_a_slot_is_given_back_before_the_answer_is_settled(store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(store, fake, max_concurrency=1)
    settle = store.settle
    second_sent = asyncio.Event()
    held: list[bool] = []

    async def slow_first_settle(*args: Any) -> Any:
        if not held:  # the first answer's settlement waits until another call was sent
            held.append(True)
            await asyncio.wait_for(second_sent.wait(), 10)
        return await settle(*args)

    async def answer(model: str, messages: list[Message]) -> str:
        if len(fake.calls) >= 2:
            second_sent.set()
        return kind_answer(model, messages)

    fake.answer = answer
    store.settle = slow_first_settle  # type: ignore[method-assign,assignment]
    tasks = [await store.create_task(prompt=f"p{i}", budget_usd=5.0) for i in range(2)]  # planned: a planner call each
    for t in tasks:
        ex.submit(t.id)
    try:
        for t in tasks:
            assert await ex.wait(t.id, timeout=60) == "completed"
    finally:
        await ex.stop()
    assert held and second_sent.is_set()


async def test_a_fan_out_reserves_in_one_commit(store: RunStore) -> None:
    batches: list[int] = []
    reserve = store.reserve

    async def counting(requests: Any) -> Any:
        batches.append(len(requests))
        return await reserve(requests)

    store.reserve = counting  # type: ignore[method-assign]
    ex = executor(store, FakeLLM(answer=kind_answer))
    p = plan(("root", []), *[(f"leaf {i}", [0]) for i in range(10)])
    task = await store.create_task(prompt="p", budget_usd=5.0, plan_in=p)
    await ex.run_task(task.id)
    assert (await store.snapshot(task.id))["status"] == "completed"
    # root, then the ten leaves together (one transaction), then the synthesis
    assert batches == [1, 10, 1]


async def test_a_call_that_times_out_is_retried_and_counted_at_its_worst_case(store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer, latency=lambda _m, msgs: 5.0 if "worker" in msgs[0]["content"] else 0)
    ex = executor(store, fake, call_timeout_s=0.05, max_attempts=2, max_replans=0)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", [])))
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    sub = snap["subtasks"][0]
    assert sub["status"] == "failed" and sub["attempts"] == 2 and "no answer within 0.05s" in sub["error"]
    rows = [r for r in ledger(store, task.id) if r.kind == "subtask"]
    assert [r.status for r in rows] == ["lost", "lost"]
    assert all(r.cost_usd == r.reserved_usd > 0 for r in rows)
    assert snap["total_cost_usd"] == pytest.approx(sum(r.cost_usd for r in ledger(store, task.id)), abs=1e-12)
    assert snap["prompt_versions"] and set(snap["prompt_versions"]) == {"decompose", "subtask", "synthesize", "check", "replan"}


async def test_model_output_that_is_not_clean_text_is_stored_safely(any_store: RunStore) -> None:
    def answer(model: str, msgs: list[Message]) -> str:
        return "bad \x00 and \ud800 bytes" if "worker" in msgs[0]["content"] else kind_answer(model, msgs)

    ex = executor(any_store, FakeLLM(answer=answer))
    task = await any_store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", [])))
    await ex.run_task(task.id)
    snap = await any_store.snapshot(task.id)
    assert snap["status"] == "completed"
    assert snap["subtasks"][0]["result"] == "bad \ufffd and ? bytes"


async def test_a_providers_408_answer_is_an_error_at_no_cost(store: RunStore) -> None:
    """A 408 is the provider's answer (not billed), unlike our own timeout: two of them
    leave the budget whole, so the third attempt still fits where worst cases would not."""
    answers = [transient(408), transient(408)]

    def answer(model: str, msgs: list[Message]) -> Any:
        if "worker" in msgs[0]["content"] and answers:
            return answers.pop(0)
        return kind_answer(model, msgs)

    p = plan(("A", []))
    one_call = _worst_cases("p", p, 1024)[0]
    ex = executor(store, FakeLLM(answer=answer), max_attempts=3)
    task = await store.create_task(prompt="p", budget_usd=one_call * 1.5, plan_in=p)
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    assert snap["subtasks"][0]["status"] == "completed" and snap["subtasks"][0]["attempts"] == 3
    rows = [r for r in ledger(store, task.id) if r.kind == "subtask"]
    assert [(r.status, r.cost_usd) for r in rows[:2]] == [("error", 0.0), ("error", 0.0)]
    assert rows[2].status == "ok" and rows[2].cost_usd > 0
    assert snap["total_cost_usd"] == pytest.approx(sum(r.cost_usd for r in ledger(store, task.id)), abs=1e-12)


async def test_a_fallback_chain_that_fails_names_every_models_error(store: RunStore) -> None:
    def answer(model: str, msgs: list[Message]) -> Any:
        if "worker" in msgs[0]["content"]:
            return transient(503 if "haiku" in model else 500, model)
        return kind_answer(model, msgs)

    ex = executor(store, FakeLLM(answer=answer), tier1_models=["anthropic/claude-haiku-4-5", "openai/gpt-4.1-mini"],
                  max_attempts=2)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", []), ("B", [])))
    await ex.run_task(task.id)
    snap = await store.snapshot(task.id)
    for sub in snap["subtasks"]:
        assert sub["status"] == "failed" and sub["attempts"] == 4
        assert sub["error"] == ("every model failed: anthropic/claude-haiku-4-5: simulated 503; "
                                "openai/gpt-4.1-mini: simulated 500")
    assert snap["status"] == "failed" and "every model failed" in snap["error"]


async def test_a_single_models_failure_is_its_own_error(store: RunStore) -> None:
    from compound.core.errors import FallbackExhausted, ProviderError

    err = ProviderError("m: boom", model="m", status=400)
    assert FallbackExhausted([err, transient(503, "n")]).errors[0] is err
    fake = FakeLLM(answer=lambda m, msgs: err if "worker" in msgs[0]["content"] else kind_answer(m, msgs))
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("A", [])))
    await ex.run_task(task.id)
    assert (await store.snapshot(task.id))["subtasks"][0]["error"] == "m: boom"
