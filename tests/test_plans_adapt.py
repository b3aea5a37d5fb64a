"""Plans that adapt: a streamed plan whose subtasks start while the planner writes, and
bounded replanning after a subtask fails for good that keeps every finished result.
The pure parts by tables; the rest through the HTTP API, the executor and the
simulator (which streams the planner's answer at a per-token rate)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from compound.core.settings import Settings
from compound.executor.growing import GrowingDag
from compound.executor.scheduler import Ended
from compound.planner.plan import SubtaskIn
from compound.planner.replan import additions
from compound.planner.stream import PlanStream, entry_errors
from compound.simulator import Failure, Simulator
from compound.store.base import RunStore
from compound.store.values import SubState
from tests.fixtures.api import Api, serving
from tests.test_live import parse_sse


def _plan(*subs: tuple[str, int, list[int]], reasoning: str = "r") -> str:
    return json.dumps({"reasoning": reasoning, "subtasks": [
        {"description": d, "tier_hint": t, "depends_on": deps} for d, t, deps in subs]})


def _feed(stream: PlanStream, text: str, size: int = 5) -> list[list[int]]:
    """The indices handed out after each piece of `size` characters."""
    return [[i for i, _ in stream.feed(text[k:k + size])] for k in range(0, len(text), size)]


# the pure parts -------------------------------------------------------------------------

ENTRY_CASES = [
    ({"description": "a", "tier_hint": 1, "depends_on": []}, 0, []),
    ({"description": "a", "tier_hint": 2, "depends_on": [5]}, 1, []),  # a forward reference waits
    ({"description": "a"}, 0, []),  # the defaults: tier 1, no dependency
    ({"description": " ", "tier_hint": 1}, 0, ["non-blank"]),
    ({"description": "a", "tier_hint": 4}, 0, ["tier_hint 4"]),
    ({"description": "a", "tier_hint": "2"}, 0, ["tier_hint '2'"]),
    ({"description": "a", "depends_on": [2]}, 2, ["depends on itself"]),
    ({"description": "a", "depends_on": ["0"]}, 1, ["'0'"]),
    ({"description": "a", "depends_on": [20]}, 1, ["20"]),
    ({"description": "a", "depends_on": 0}, 1, ["must be a list"]),
    ("do a", 0, ["must be an object"]),
    ({"description": "a"}, 20, ["more than 20"]),
]


@pytest.mark.parametrize(("item", "index", "wanted"), ENTRY_CASES)
def test_an_entry_is_checked_on_its_own(item: Any, index: int, wanted: list[str]) -> None:
    errors = entry_errors(item, index, 20)
    assert len(errors) == len(wanted)
    for error, part in zip(errors, wanted, strict=True):
        assert part in error


def test_each_entry_is_handed_out_once_when_the_next_begins() -> None:
    text = _plan(("a", 1, [2]), ("b", 2, []), ("c", 1, [0, 1]))
    stream = PlanStream(20)
    out = _feed(stream, text)
    handed = [i for piece in out for i in piece]
    assert handed == [0, 1]  # the last one waits for the whole answer
    first = next(k for k, piece in enumerate(out) if piece)
    assert (first + 1) * 5 < text.index('"b"')  # entry 0 came before entry 1's text
    assert stream.emitted == [SubtaskIn(description="a", tier_hint=1, depends_on=[2]),
                              SubtaskIn(description="b", tier_hint=2, depends_on=[])]
    assert stream.stopped is None


def test_an_entry_after_the_list_closes_is_handed_out() -> None:
    text = json.dumps({"subtasks": [{"description": "a", "tier_hint": 1, "depends_on": []}], "reasoning": "r"})
    stream = PlanStream(20)
    assert [i for piece in _feed(stream, text) for i in piece] == [0]


@pytest.mark.parametrize(("subs", "handed", "why"), [
    ([("a", 1, []), ("b", 7, []), ("c", 1, [])], [0], "tier_hint 7"),
    ([("a", 1, []), ("A ", 1, []), ("c", 1, [])], [0], "repeats an earlier subtask"),
    ([("a", 1, []), ("b", 1, [1]), ("c", 1, [])], [0], "depends on itself"),
])
def test_an_invalid_entry_stops_the_handing_out(subs: list[tuple[str, int, list[int]]], handed: list[int],
                                                why: str) -> None:
    stream = PlanStream(20)
    assert [i for piece in _feed(stream, _plan(*subs)) for i in piece] == handed
    assert stream.stopped is not None and why in stream.stopped


def test_a_retried_answer_must_repeat_what_was_handed_out() -> None:
    stream = PlanStream(20)
    _feed(stream, _plan(("a", 1, []), ("b", 1, []), ("c", 1, [])))
    stream.restart()
    assert [i for p in _feed(stream, _plan(("a", 1, []), ("b", 1, []), ("c", 1, []), ("d", 1, []))) for i in p] \
        == [2]  # 0 and 1 repeated, 2 new
    stream.restart()
    _feed(stream, _plan(("a", 1, []), ("B", 1, []), ("x", 1, [])))
    assert stream.stopped is not None and "changed subtask 1" in stream.stopped


@pytest.mark.parametrize(("answer", "errors"), [
    ({"subtasks": [{"description": "x", "depends_on": [0]}, {"description": "y", "depends_on": [3]}]}, []),
    ({"subtasks": []}, []),
    ([{"description": "x", "depends_on": [0]}], []),
    ({"subtasks": [{"description": "x", "depends_on": [1]}]}, ["depends on 1"]),  # 1 failed
    ({"subtasks": [{"description": "x", "depends_on": [4]}, {"description": "y"}]}, ["depends on 4"]),  # later
    ({"subtasks": [{"description": "x", "tier_hint": 9}]}, ["tier_hint 9"]),
    ({"plan": "none"}, ["no 'subtasks' list"]),
    ({"subtasks": [{"description": str(i)} for i in range(4)]}, ["at most 3"]),
])
def test_a_rounds_additions_depend_on_finished_or_earlier_additions(answer: Any, errors: list[str]) -> None:
    from compound.core.errors import PlanInvalid

    try:
        got = additions(answer, finished={0, 2}, next_index=3, max_new=3)
    except PlanInvalid as exc:
        assert len(exc.errors) == len(errors) and all(e in x for e, x in zip(errors, exc.errors, strict=True))
    else:
        assert not errors and len(got) == len(answer["subtasks"] if isinstance(answer, dict) else answer)


async def test_a_growing_dag_waits_for_a_forward_reference_and_strands_what_never_comes() -> None:
    started: list[int] = []
    skipped: dict[int, str] = {}
    gate = asyncio.Event()

    async def run_one(i: int) -> Ended | None:
        started.append(i)
        if i == 2:
            await gate.wait()
        return None

    async def skip(i: int, _how: Ended, reason: str) -> None:
        skipped[i] = reason

    dag = GrowingDag(run_one, skip)
    runner = asyncio.ensure_future(dag.run())
    dag.add(0, [2])  # waits for 2, not yet arrived
    dag.add(1, [])
    dag.add(2, [])
    dag.add(3, [7])  # 7 never comes
    dag.add(4, [3])
    while len(started) < 2:
        await asyncio.sleep(0)
    assert started == [1, 2] and dag.state[0] == "pending"
    gate.set()
    while dag.state.get(0) != "completed":
        await asyncio.sleep(0)
    dag.close()
    await runner
    assert started == [1, 2, 0]
    assert skipped == {3: "skipped: dependency 7 is not in the plan",
                       4: "skipped: dependency 3 was skipped (dependency 7 failed)"}


# through the API and the simulator -----------------------------------------------------------


async def _api(settings: Settings) -> AsyncIterator[Api]:
    async with serving(settings) as api:
        yield api


@pytest.fixture
async def replanning(sim_settings: Settings) -> AsyncIterator[Api]:
    async for api in _api(sim_settings.model_copy(update={"max_replans": 3})):
        yield api


def _worker(sim: Simulator, description: str) -> list[dict[str, Any]]:
    return [c for c in sim.calls("worker") if re.search(rf"<subtask>\n{re.escape(description)}\n", c["text"])]


def _subtask_descriptions(sim: Simulator) -> list[str]:
    return [re.search(r"<subtask>\n(.*?)\n</subtask>", c["text"], re.S).group(1)  # type: ignore[union-attr]
            for c in sim.calls("worker")]


async def _submit(api: Api, prompt: str, **extra: Any) -> dict[str, Any]:
    r = await api.http.post("/v1/tasks", json={"prompt": prompt, **extra}, headers=api.auth(api.alice))
    assert r.status_code == 202, r.text
    return await api.wait(r.json()["id"], api.alice)


async def test_with_streaming_the_first_subtask_starts_before_the_plan_ends(api: Api, sim: Simulator) -> None:
    sim.script.token_s = {"planner": 0.01}
    answer = _plan(*[(f"Look up fact {i}", 1, []) for i in range(4)], ("Join the facts", 2, [0, 1, 2, 3]))
    sim.answer("planner", answer)
    snap = await _submit(api, "four facts and a join")
    assert snap["status"] == "completed", snap["error"]
    (planner,) = sim.calls("planner")
    assert planner["body"]["stream"] is True
    first = _worker(sim, "Look up fact 0")[0]
    assert first["at"] < planner["ended_at"]  # the planner was still writing
    assert _worker(sim, "Join the facts")[0]["at"] > planner["ended_at"]  # the last entry waits for the end
    assert sorted(_subtask_descriptions(sim)) == sorted(s["description"] for s in snap["subtasks"])  # each once
    assert [s["round"] for s in snap["subtasks"]] == [0] * 5 and snap["replans"] == []
    assert snap["warnings"] == []


async def test_without_streaming_nothing_starts_before_the_plan_ends(sim_settings: Settings,
                                                                     sim: Simulator) -> None:
    sim.script.token_s = {"planner": 0.002}
    sim.answer("planner", _plan(("Look up fact 0", 1, []), ("Look up fact 1", 1, []), ("Join", 2, [0, 1])))
    async for api in _api(sim_settings.model_copy(update={"stream_plans": False})):
        snap = await _submit(api, "two facts and a join")
    assert snap["status"] == "completed", snap["error"]
    (planner,) = sim.calls("planner")
    assert not planner["body"].get("stream")
    assert min(c["at"] for c in sim.calls("worker")) >= planner["ended_at"]


async def test_an_invalid_entry_mid_stream_waits_for_the_repaired_plan(api: Api, sim: Simulator) -> None:
    # entry 1's tier is out of range: entry 0 starts at once, 1 and 2 wait for the whole
    # answer, whose deterministic repair makes it tier 3
    sim.script.token_s = {"planner": 0.01}
    sim.answer("planner", _plan(("Look up fact 0", 1, []), ("Weigh fact 0", 7, [0]), ("Sum up", 2, [0, 1])))
    snap = await _submit(api, "a fact, weighed")
    assert snap["status"] == "completed", snap["error"]
    (planner,) = sim.calls("planner")
    assert _worker(sim, "Look up fact 0")[0]["at"] < planner["ended_at"]
    assert _worker(sim, "Weigh fact 0")[0]["at"] > planner["ended_at"]
    assert [(s["description"], s["tier_hint"]) for s in snap["subtasks"]] == [
        ("Look up fact 0", 1), ("Weigh fact 0", 3), ("Sum up", 2)]
    assert [w.split(":")[0] for w in snap["warnings"]] == ["tier out of range"]
    assert len(sim.calls("worker")) == 3


async def test_an_entry_the_whole_plan_changes_before_it_started_runs_as_changed(api: Api, sim: Simulator) -> None:
    # entry 0 waits for entry 5, which never comes: the whole answer's repair drops that
    # dependency; entry 0 had not started, so it runs as repaired, without a repair call
    sim.script.token_s = {"planner": 0.01}
    sim.answer("planner", _plan(("Look up fact 0", 1, [5]), ("Look up fact 1", 1, []), ("Sum up", 2, [0, 1])))
    snap = await _submit(api, "two facts")
    assert snap["status"] == "completed", snap["error"]
    (planner,) = sim.calls("planner")
    assert _worker(sim, "Look up fact 1")[0]["at"] < planner["ended_at"]
    assert _worker(sim, "Look up fact 0")[0]["at"] > planner["ended_at"]
    assert [s["depends_on"] for s in snap["subtasks"]] == [[], [], [0, 1]]
    assert [w.split(":")[0] for w in snap["warnings"]] == ["dependency out of range"]
    assert sorted(_subtask_descriptions(sim)) == ["Look up fact 0", "Look up fact 1", "Sum up"]


async def test_a_plan_invalid_after_subtasks_started_is_cut_to_them(api: Api, sim: Simulator) -> None:
    # 0 and 1 start while the plan streams; the whole answer has a cycle (2 -> 3 -> 2)
    # and its repair changes subtask 0: the plan keeps what started, nothing runs twice
    sim.script.token_s = {"planner": 0.01}
    sim.answer("planner",
               _plan(("Look up fact 0", 1, []), ("Use fact 0", 1, [0]), ("Cycle a", 1, [3]), ("Cycle b", 1, [2])),
               _plan(("Something else", 1, []), ("Use it", 1, [0])))
    snap = await _submit(api, "facts with a cycle")
    assert len(sim.calls("planner")) == 2  # the answer, one repair
    assert sim.calls("planner")[1]["body"].get("stream") is not True  # the repair is not streamed
    subs = {s["description"]: s for s in snap["subtasks"]}
    assert list(subs) == ["Look up fact 0", "Use fact 0", "Cycle a"]
    assert subs["Look up fact 0"]["status"] == subs["Use fact 0"]["status"] == "completed"
    assert subs["Cycle a"]["status"] == "skipped"
    assert subs["Cycle a"]["error"] == "skipped: dependency 3 is not in the plan"
    assert snap["warnings"][0].startswith("streamed plan cut: the planner's answer was invalid twice")
    assert sorted(_subtask_descriptions(sim)) == ["Look up fact 0", "Use fact 0"]  # each once, none of the repair's
    assert snap["status"] == "partial"


async def test_a_planner_that_fails_before_any_entry_fails_the_task_as_before(api: Api, sim: Simulator) -> None:
    sim.fail(Failure(400, kind="planner", message="bad request"))
    snap = await _submit(api, "anything")
    assert snap["status"] == "failed" and snap["error"].startswith("could not plan: the planner model failed")
    assert snap["subtasks"] == [] and sim.calls("worker") == []


async def test_replanning_after_a_permanent_failure_keeps_every_finished_result(
        replanning: Api, sim: Simulator) -> None:
    api = replanning
    # permanent (no retry, no fallback), for this subtask only
    sim.fail(Failure(400, kind="worker", text="<subtask>\nWork out: find b\n"))
    r = await api.http.post("/v1/tasks", json={"prompt": "find a and find b"}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    snap = await api.wait(task_id, api.alice)
    assert snap["status"] == "completed", snap["error"]
    by_round = [(s["description"], s["status"], s["round"]) for s in snap["subtasks"]]
    assert by_round == [
        ("Work out: find a", "completed", 0),
        ("Work out: find b", "failed", 0),
        ("Combine the findings into one recommendation", "skipped", 0),
        ("Another way to: Work out: find b", "completed", 1),
        ("Another way to: Combine the findings into one recommendation", "completed", 1)]
    assert snap["subtasks"][3]["depends_on"] == [0]  # uses the finished result
    assert [x["round"] for x in snap["replans"]] == [1]
    assert "subtask 1: failed for good" in snap["replans"][0]["reason"]
    # the round's prompt carried the finished result and what failed
    planner = sim.calls("planner")
    assert len(planner) == 2 and "<failed>" in planner[1]["text"] and "Result of subtask" in planner[1]["text"]
    # no finished subtask was called twice
    calls = _subtask_descriptions(sim)
    assert calls.count("Work out: find a") == 1
    # the event stream shows the round starting, and why
    async with api.http.stream("GET", f"/v1/tasks/{task_id}/events", headers=api.auth(api.alice)) as resp:
        events = parse_sse("".join([c async for c in resp.aiter_text()]))
    rounds = [e["data"]["replan"] for e in events if e["event"] == "task" and "replan" in e["data"]]
    assert rounds == [snap["replans"][0]]
    round_at = next(k for k, e in enumerate(events) if "replan" in e["data"])
    added = [k for k, e in enumerate(events) if e["event"] == "subtask" and e["data"]["index"] >= 3]
    failed_at = next(k for k, e in enumerate(events) if e["event"] == "subtask" and e["data"]["status"] == "failed")
    assert failed_at < round_at < min(added)
    # the synthesis saw every result, old and new
    assert "Final answer built from 3 results" in snap["result"]


async def test_replanning_stops_at_a_round_whose_additions_all_fail(replanning: Api, sim: Simulator) -> None:
    sim.fail(Failure(400, kind="worker", text="find b\n</subtask>", times=10))
    snap = await _submit(replanning, "find a and find b")
    # round 1: "find b" again fails, the join completes; round 2: only "find b" again,
    # which fails: a round that adds nothing that completes ends replanning (bound 3)
    assert [x["round"] for x in snap["replans"]] == [1, 2]
    assert len(sim.calls("planner")) == 3
    assert max(s["round"] for s in snap["subtasks"]) == 2
    assert snap["status"] == "partial"
    assert _subtask_descriptions(sim).count("Work out: find a") == 1


async def test_replanning_stops_at_the_bound(api: Api, sim: Simulator) -> None:
    sim.fail(Failure(400, kind="worker", text="find b\n</subtask>", times=10))  # sim_settings: the default bound, 1
    snap = await _submit(api, "find a and find b")
    assert [x["round"] for x in snap["replans"]] == [1]
    assert len(sim.calls("planner")) == 2
    assert snap["status"] == "partial"


async def test_replanning_off(sim_settings: Settings, sim: Simulator) -> None:
    sim.fail(Failure(400, kind="worker", text="<subtask>\nWork out: find b\n"))
    async for api in _api(sim_settings.model_copy(update={"max_replans": 0})):
        snap = await _submit(api, "find a and find b")
    assert snap["replans"] == [] and len(sim.calls("planner")) == 1 and snap["status"] == "partial"


async def test_a_replanning_round_is_reserved_in_the_budget_first(api: Api, sim: Simulator) -> None:
    # the budget holds both subtasks' worst cases one after the other, but not then a
    # planner call's: the round starts, its call is refused before it is sent
    plan = {"subtasks": [{"description": "Find a", "tier_hint": 1, "depends_on": []},
                         {"description": "Find b", "tier_hint": 1, "depends_on": [0]}]}
    sim.fail(Failure(400, kind="worker", text="<subtask>\nFind b\n"))
    snap = await _submit(api, "find a and b", plan=plan, budget_usd=0.01)
    assert [s["status"] for s in snap["subtasks"]] == ["completed", "failed"]
    assert [x["round"] for x in snap["replans"]] == [1]  # the round started ...
    assert sim.calls("planner") == []  # ... and its call did not fit: not sent
    assert len(snap["subtasks"]) == 2 and snap["status"] == "partial"
    assert snap["total_cost_usd"] <= 0.01


async def test_the_store_adds_subtasks_with_their_round_and_records_each_round(any_store: RunStore) -> None:
    store = any_store
    task = await store.create_task(prompt="p", budget_usd=1.0)

    def sub(i: int, deps: list[int], round_: int) -> SubState:
        return SubState(index=i, description=f"step {i}", tier_hint=1, tier_assigned=1, models=["m"],
                        depends_on=deps, status="pending", model="m", round=round_)

    await store.add_subtasks(task.id, [sub(0, [1], 0)])  # a streamed entry, its dependency not yet there
    await store.add_subtasks(task.id, [sub(1, [], 0)])
    before = (await store.load(task.id)).event_seq  # type: ignore[union-attr]
    await store.add_subtasks(task.id, [], replan={"round": 1, "reason": "subtask 1: failed for good (x)"})
    await store.add_subtasks(task.id, [sub(2, [0], 1)])
    loaded = await store.load(task.id)
    assert loaded is not None
    assert [(s.index, s.depends_on, s.round) for s in loaded.subtasks] == [(0, [1], 0), (1, [], 0), (2, [0], 1)]
    snap = await store.snapshot(task.id)
    assert [s["round"] for s in snap["subtasks"]] == [0, 0, 1]
    assert snap["replans"] == [{"round": 1, "reason": "subtask 1: failed for good (x)"}]
    events = await store.events_after(task.id, before)
    assert [(e.kind, e.data.get("replan"), e.data["status"]) for e in events] == [
        ("task", {"round": 1, "reason": "subtask 1: failed for good (x)"}, "queued")]


async def test_a_task_canceled_while_its_plan_streams_stops_everything(api: Api, sim: Simulator) -> None:
    sim.script.token_s = {"planner": 0.02}
    sim.script.latency = lambda _m, kind, _t: 1.0 if kind == "worker" else 0.0
    sim.answer("planner", _plan(*[(f"Look up fact {i}", 1, []) for i in range(8)], ("Join", 2, list(range(8)))))
    r = await api.http.post("/v1/tasks", json={"prompt": "eight facts"}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    store = api.app.state.store
    async with store.subscribe(task_id) as events:
        async for ev in events:  # the first subtask runs while the plan is still being written
            if ev.kind == "subtask" and ev.data["status"] == "running":
                break
    r = await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.auth(api.alice))
    assert r.status_code == 200, r.text
    snap = await api.wait(task_id, api.alice)
    assert snap["status"] == "canceled"
    assert all(s["status"] in ("canceled", "skipped", "completed", "failed") for s in snap["subtasks"])
    assert 1 <= len(snap["subtasks"]) < 9  # the plan had not arrived whole
    assert len(sim.calls("planner")) == 1
    rows = await store.ledger_rows(task_id)
    assert all(r["status"] != "reserved" for r in rows)  # every open call closed
    assert len(sim.calls("worker")) <= sum(1 for s in snap["subtasks"] if s["attempts"])


async def test_a_held_subtask_waits_until_it_is_replaced_or_released() -> None:
    started: list[int] = []

    async def run_one(i: int) -> Ended | None:
        started.append(i)
        return None

    async def skip(_i: int, _how: Ended, _reason: str) -> None:
        raise AssertionError("nothing is skipped")

    dag = GrowingDag(run_one, skip)
    runner = asyncio.ensure_future(dag.run())
    dag.add(0, [])
    dag.add(1, [7])  # waits for 7
    assert dag.hold(1) and dag.hold(2)  # 2 is not there yet: held before it comes
    dag.add(2, [])
    while not started:
        await asyncio.sleep(0)
    assert not dag.hold(0)  # started
    dag.replace(1, [0])  # the whole plan's version: depends on 0, which completed
    dag.release(2)
    dag.close()
    await runner
    assert sorted(started) == [0, 1, 2]
    assert dag.state == {0: "completed", 1: "completed", 2: "completed"}


async def test_the_store_replaces_only_a_pending_subtask(any_store: RunStore) -> None:
    from compound.core.errors import NotFound

    store = any_store
    task = await store.create_task(prompt="p", budget_usd=1.0)
    first = SubState(index=0, description="a", tier_hint=1, tier_assigned=1, models=["m"], depends_on=[3],
                     status="pending", model="m")
    await store.add_subtasks(task.id, [first])
    got = await store.replace_pending(task.id, SubState(index=0, description="b", tier_hint=2, tier_assigned=2,
                                                        models=["n"], depends_on=[], status="pending", model="n"))
    assert (got.description, got.tier_assigned, got.depends_on, got.models) == ("b", 2, [], ["n"])
    await store.end_subtask(task.id, 0, status="skipped", error="x")
    with pytest.raises(NotFound):
        await store.replace_pending(task.id, got)


async def _resume_streamed(settings: Settings, stored: list[tuple[str, list[int], str | None]]) -> dict[str, Any]:
    """A task whose streamed plan stopped (a restart) after `stored` entries had been
    stored, each (description, depends_on, its result when it had completed), resumed."""
    from compound.executor.service import Executor
    from compound.llm import build_client
    from compound.store import open_store
    from compound.store.models import TaskStatus

    async with open_store(settings.database_url) as store:
        task = await store.create_task(prompt="p", budget_usd=1.0)
        await store.set_status(task.id, TaskStatus.planning)
        await store.add_subtasks(task.id, [
            SubState(index=i, description=d, tier_hint=1, tier_assigned=1, models=["anthropic/claude-haiku-4-5"],
                     depends_on=deps, status="pending", model="anthropic/claude-haiku-4-5")
            for i, (d, deps, _) in enumerate(stored)])
        for i, (_, _, result) in enumerate(stored):
            if result is not None:
                await store.complete_subtask(task.id, i, result=result)
        client = build_client(settings)
        ex = Executor(settings=settings, store=store, client=client)
        await ex.run_task(task.id)
        snap = await store.snapshot(task.id)
        await ex.stop()
        await client.aclose()
    return snap


async def test_a_task_resumed_while_its_plan_streamed_asks_for_the_whole_plan_and_keeps_what_ran(
        sim_settings: Settings, sim: Simulator) -> None:
    sim.answer("planner", _plan(("Step 0", 1, []), ("Step 1", 1, [0]), ("Step 2", 1, []), ("Join", 2, [1, 2])))
    snap = await _resume_streamed(sim_settings, [("Step 0", [], "the earlier result"), ("Step 1", [0], None)])
    assert snap["status"] == "completed", snap["error"]
    assert [s["description"] for s in snap["subtasks"]] == ["Step 0", "Step 1", "Step 2", "Join"]
    assert snap["subtasks"][0]["result"] == "the earlier result"
    assert len(sim.calls("planner")) == 1
    assert sorted(_subtask_descriptions(sim)) == ["Join", "Step 1", "Step 2"]  # the finished one is not called
    assert snap["warnings"] == []


async def test_a_resumed_plan_that_changes_what_ran_is_cut_to_the_stored_entries(
        sim_settings: Settings, sim: Simulator) -> None:
    sim.answer("planner", _plan(("Something else", 1, []), ("Step 1", 1, [0])))  # twice: the repair too
    snap = await _resume_streamed(sim_settings, [("Step 0", [], "the earlier result"), ("Step 1", [0], None),
                                                 ("Step 2", [4], None)])  # 4 never arrived
    assert [s["status"] for s in snap["subtasks"]] == ["completed", "completed", "skipped"]
    assert snap["subtasks"][2]["error"] == "skipped: dependency 4 is not in the plan"
    assert len(sim.calls("planner")) == 2 and _subtask_descriptions(sim) == ["Step 1"]
    assert any(w.startswith("streamed plan cut: the planner's answer was invalid twice") for w in snap["warnings"])
    assert snap["status"] == "partial"


async def test_a_streamed_plan_negotiates_the_structured_output_form(sim_settings: Settings, sim: Simulator) -> None:
    # an OpenAI-compatible server that refuses json_schema with a 500 naming
    # response_format (llama-cpp-python): the streamed call steps down, as one not streamed
    from compound.simulator import request_form

    sim.script.refuse_formats = {"json_schema": 500}
    sim.script.token_s = {"planner": 0.005}
    async for api in _api(sim_settings.model_copy(update={"planner_model": "openai/gpt-4.1-mini"})):
        snap = await _submit(api, "find a and find b")
    assert snap["status"] == "completed", snap["error"]
    planner = sim.calls("planner")
    assert [request_form(c["body"]) for c in planner] == ["json_schema", "json_object_schema"]
    assert all(c["body"]["stream"] for c in planner)
    assert planner[1]["body"]["response_format"]["schema"]["properties"]["subtasks"]["maxItems"] == 20
    assert len(snap["subtasks"]) == 3 and _worker(sim, "Work out: find a")[0]["at"] < planner[1]["ended_at"]
