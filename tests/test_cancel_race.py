"""Cancel against a task's end, on the plain Executor: a status write never changes a
task that has ended, a cancel says what really happened (409 when the task ended
first), each task has exactly one terminal event, and every reservation is settled
when it ends: a call canceled before it was sent at nothing, one canceled mid-stream
at what was received, one canceled with nothing known at its worst case.
(tests/test_queue_race.py runs the same race in queue mode, on PostgreSQL.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from compound.core.errors import Conflict
from compound.core.status import task_path
from compound.executor.answers import AnswerPiece
from compound.executor.host import ExecutorHost
from compound.llm.base import Completion, Delta, Message, StreamEvent, ToolChoice, ToolSpec, Usage
from compound.simulator import prompt_kind
from compound.store.base import RunStore
from compound.store.models import TERMINAL_TASK
from compound.store.values import ReserveOutcome, ReserveRequest
from tests.fixtures.fakes import FakeLLM
from tests.test_executor import PRICE, executor, kind_answer, ledger, plan

ENDED = sorted(TERMINAL_TASK)


@pytest.mark.parametrize(("before", "to", "only_from", "applies"), [
    ("queued", "planning", None, True),
    ("executing", "completed", None, True),
    ("executing", "canceled", None, True),
    ("queued", "canceled", ("queued", "planned"), True),
    ("planning", "canceled", ("queued", "planned"), False),
    ("executing", "canceled", ("queued", "planned"), False),
    *[(ended, to, None, False) for ended in ENDED for to in ("canceled", "completed", "executing")],
])
async def test_a_status_write_applies_only_while_the_task_has_not_ended(
        any_store: RunStore, before: str, to: str, only_from: tuple[str, ...] | None, applies: bool) -> None:
    task = await any_store.create_task(prompt="p", budget_usd=1.0)
    for step in task_path(before):  # the way the table lets a task get there
        assert await any_store.set_status(task.id, step)
    events = len(await any_store.events_after(task.id, 0))
    assert await any_store.set_status_unless_ended(task.id, to, only_from=only_from) is applies
    assert (await any_store.head(task.id)).status == (to if applies else before)
    assert len(await any_store.events_after(task.id, 0)) == events + applies  # an event only when it applied


async def cancel_race(store: RunStore, host: ExecutorHost, n: int, name: str = "task") -> dict[str, str]:
    """n tasks (one subtask, or two and a synthesis), each canceled on hearing its k-th
    event, from before it starts to after its end: what each cancel answered ("canceled",
    or "conflict" when the task ended otherwise first)."""
    said: dict[str, str] = {}

    async def one(i: int) -> None:
        p = plan((f"{name} part a {i}", [])) if i % 2 else plan((f"{name} part a {i}", []),
                                                                  (f"{name} part b {i}", [0]))
        task = await store.create_task(prompt=f"{name} {i}", budget_usd=1.0, plan_in=p)
        heard = 0
        async with store.subscribe(task.id, after=0) as sub:
            await host.dispatch(task.id, priority=2)
            async for ev in sub:
                heard += 1
                if heard > i % 9 or ev.terminal:
                    break
        try:
            await host.cancel(task.id)
            said[task.id] = "canceled"
        except Conflict:
            said[task.id] = "conflict"

    await asyncio.gather(*(one(i) for i in range(n)))
    return said


async def check_race(store: RunStore, said: dict[str, str], *, cost_abs: float = 1e-9) -> None:
    """Both sides of the race were run; each answer matches the task's end; each task
    has one terminal event, no ledger row left reserved, and a total equal to its ledger
    (within `cost_abs`: the snapshot shows dollars to six places)."""
    assert set(said.values()) == {"canceled", "conflict"}
    for task_id, answer in said.items():
        snap = await store.snapshot(task_id)
        assert (snap["status"] == "canceled") == (answer == "canceled"), (task_id, answer, snap["status"])
        events = await store.events_after(task_id, 0)
        assert sum(1 for e in events if e.terminal) == 1, task_id
        rows = await store.ledger_rows(task_id)
        assert [r["status"] for r in rows if r["status"] == "reserved"] == []
        assert snap["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), abs=cost_abs)
        if answer == "conflict":
            assert snap["status"] == "completed" and snap["result"]


async def test_a_cancel_at_every_moment_of_a_task_says_what_happened(any_store: RunStore) -> None:
    """60 tasks, each canceled on hearing its n-th event, on the plain Executor."""
    fake = FakeLLM(answer=kind_answer, latency=lambda _m, _msgs: 0.001)
    ex = executor(any_store, fake, max_attempts=1)
    try:
        said = await cancel_race(any_store, ex, 60)
    finally:
        await ex.stop()
    await check_race(any_store, said)


class Held(FakeLLM):
    """Answers the planner and the subtasks at once; the answer call (the synthesis)
    streams `pieces` and then waits until it is canceled."""

    def __init__(self, pieces: Sequence[str]) -> None:
        super().__init__(answer=kind_answer)
        self.pieces = list(pieces)
        self.waiting = asyncio.Event()

    async def stream(self, *, model: str, messages: list[Message], max_tokens: int,
                     json_schema: dict[str, Any] | None = None,
                     timeout_s: float | None = None, tools: Sequence[ToolSpec] | None = None,
                     tool_choice: ToolChoice = "auto") -> AsyncIterator[StreamEvent]:
        for p in self.pieces:
            yield Delta(p)
        self.waiting.set()
        await asyncio.Event().wait()  # until canceled
        yield Completion(text="never", model=model, usage=Usage(), cost_usd=0.0)  # pragma: no cover

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None = None, timeout_s: float | None = None,
                       tools: Sequence[ToolSpec] | None = None, tool_choice: ToolChoice = "auto") -> Completion:
        if prompt_kind(messages[0]["content"]) == "synthesizer":
            self.waiting.set()
            await asyncio.Event().wait()  # a synthesis not streamed: nothing comes until canceled
        return await super().complete(model=model, messages=messages, max_tokens=max_tokens,
                                      json_schema=json_schema, timeout_s=timeout_s,
                                      tools=tools, tool_choice=tool_choice)


@pytest.mark.parametrize("streamed", [True, False], ids=["mid-stream", "nothing-known"])
async def test_a_call_canceled_in_flight_is_booked_at_what_is_known(store: RunStore, streamed: bool) -> None:
    fake = Held(["The answer ", "so far"])
    ex = executor(store, fake)
    ex.calls.answers = ex.answers  # the answer call streams while someone listens
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("a", []), ("b", [])))
    heard: list[AnswerPiece] = []
    try:
        if streamed:
            with ex.answers.listen(task.id, heard.append):
                ex.submit(task.id)
                await fake.waiting.wait()
                await ex.cancel(task.id)
        else:
            ex.submit(task.id)
            await fake.waiting.wait()
            await ex.cancel(task.id)
    finally:
        await ex.stop()
    rows = ledger(store, task.id)
    (synth,) = [r for r in rows if r.kind == "synthesis"]
    assert synth.status == "canceled"
    if streamed:
        assert "".join(p.text for p in heard) == "The answer so far"
        assert synth.output_tokens == len(b"The answer so far")
        assert 0 < synth.cost_usd < synth.reserved_usd
        assert synth.cost_usd == pytest.approx(synth.reserved_usd - (ex.settings.synthesis_max_tokens
                                                                     - synth.output_tokens) * PRICE.output)
    else:
        assert synth.cost_usd == synth.reserved_usd  # nothing known: its worst case
    snap = await store.snapshot(task.id)
    assert snap["status"] == "canceled"
    assert snap["total_cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows), abs=1e-12)
    assert [r for r in rows if r.status == "reserved"] == []


async def test_a_call_canceled_before_it_was_sent_costs_nothing(store: RunStore) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(store, fake)
    task = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan(("a", [])))
    reserve = store.reserve

    async def reserve_then_cancel(requests: Sequence[ReserveRequest]) -> list[ReserveOutcome]:
        out = await reserve(requests)  # committed: the row is `reserved` ...
        ex._running[task.id].cancel()  # ... and its caller is canceled before it sends
        return out

    store.reserve = reserve_then_cancel  # type: ignore[method-assign]
    ex.submit(task.id)
    try:
        await store.wait_for_status(task.id, frozenset({"executing"}), 30)
        await asyncio.gather(ex._running.get(task.id) or asyncio.sleep(0), return_exceptions=True)
        await ex.cancel(task.id)
    finally:
        await ex.stop()
    assert fake.calls == []
    (row,) = ledger(store, task.id)
    assert (row.status, row.cost_usd, row.error) == ("canceled", 0.0, "canceled before it was sent")
    snap = await store.snapshot(task.id)
    assert snap["status"] == "canceled" and snap["total_cost_usd"] == 0.0
