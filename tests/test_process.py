"""`compound serve`'s executor runs in a child process of its own (executor/process.py,
executor/child.py): its commits reach subscribers here (relayed on SQLite, by
LISTEN/NOTIFY on PostgreSQL), each once and in order; its calls' observations reach
this process's metrics; a streamed answer reaches a door's client; cancel and approve
cross with their errors; a child that dies is replaced and its task resumed; a stop
leaves a running task for the next start; and the child dies with the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from compound.api.app import create_app
from compound.core.errors import Conflict, ExecutorUnavailable, NotFound
from compound.core.settings import Settings
from compound.executor.answers import AnswerPiece
from compound.executor.process import ProcessExecutor
from compound.simulator import Simulator
from compound.store.base import RunStore
from tests.fixtures.api import Api
from tests.fixtures.served import free_port, serving
from tests.test_doors_stream import held, streamed
from tests.test_hosts import events_until_end

PROMPT = "Look into the history of tea and the costs of tea and the risks of tea"
SUBTASK = "Work out: the costs of tea"  # only that subtask's call says it (until it has answered)


class Calls:
    """A CallObserver counting what it is told."""

    def __init__(self) -> None:
        self.started = 0
        self.finished: list[dict[str, Any]] = []

    def call_started(self, *, model: str, kind: str) -> None:
        self.started += 1

    def call_finished(self, **fields: object) -> None:
        self.finished.append(fields)


@contextlib.asynccontextmanager
async def running(store: RunStore, settings: Settings, **kw: object) -> AsyncIterator[ProcessExecutor]:
    executor = ProcessExecutor(settings=settings.model_copy(update={"database_url": store.url}), store=store,
                               **kw)  # type: ignore[arg-type]
    await executor.start()
    try:
        yield executor
    finally:
        await executor.stop()
    assert executor.proc is None or executor.proc.returncode is not None


async def until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Until check() is truthy (a deadline, never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_task_runs_in_the_child_and_its_events_and_calls_reach_this_process(
        any_store: RunStore, sim_settings: Settings, sim: Simulator) -> None:
    calls = Calls()
    # a generous call timeout: on a loaded machine a slow first call must not be retried
    # (an attempt that timed out is observed as an error)
    settings = sim_settings.model_copy(update={"call_timeout_s": 120.0})
    async with running(any_store, settings, observers=[calls]) as executor:
        assert executor.proc is not None and executor.proc.pid != os.getpid()
        task = await any_store.create_task(prompt=PROMPT, budget_usd=1.0)
        seen = await events_until_end(any_store, task.id, executor)
        assert seen[-1].data["status"] == "completed", seen[-1].data
        # every event once, in order: relayed on SQLite, heard by LISTEN on PostgreSQL
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
        assert {e.data["status"] for e in seen if e.kind == "subtask"} >= {"running", "completed"}
        assert await executor.wait(task.id, timeout=60) == "completed"
        snap = await any_store.snapshot(task.id)
        assert snap["status"] == "completed" and snap["total_cost_usd"] > 0
        # each model call observed here, as the child made it
        await until(lambda: len(calls.finished) == len(sim.requests), "the calls' observations")
        assert calls.started == len(sim.requests) > 3
        assert {f["status"] for f in calls.finished} == {"ok"}, [f for f in calls.finished if f["status"] != "ok"]
        spent = sum(float(f["cost_usd"]) for f in calls.finished)
        assert spent == pytest.approx(snap["total_cost_usd"])


async def test_cancel_approve_and_their_errors_cross_to_the_child(
        store: RunStore, sim_settings: Settings, sim: Simulator) -> None:
    async with running(store, sim_settings) as executor:
        with pytest.raises(NotFound):
            await executor.cancel("no-such-task")
        with pytest.raises(NotFound):
            await executor.approve("no-such-task")
        waiting = await store.create_task(prompt=PROMPT, budget_usd=1.0, approve=False)
        await executor.dispatch(waiting.id, priority=2)
        assert await executor.wait_planned(waiting.id, timeout=30) == "planned"
        await executor.approve(waiting.id)
        with pytest.raises(Conflict):  # approved already
            await executor.approve(waiting.id)
        assert await executor.wait(waiting.id, timeout=60) == "completed"
        with pytest.raises(Conflict):
            await executor.cancel(waiting.id)
        before = len([r for r in sim.calls("worker") if SUBTASK in r["text"]])  # the first task's
        with held(sim, SUBTASK):
            task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
            await executor.dispatch(task.id, priority=2)
            await until(lambda: len([r for r in sim.calls("worker") if SUBTASK in r["text"]]) > before,
                        "a held subtask call")
            await executor.cancel(task.id)  # it waits a while for the end: a loaded machine may take longer
            assert await executor.wait(task.id, timeout=60) == "canceled"


async def test_the_streamed_answer_reaches_a_listener_here(store: RunStore, sim_settings: Settings) -> None:
    async with running(store, sim_settings, stream_answers=True) as executor:
        task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
        pieces: list[AnswerPiece] = []
        with executor.answers.listen(task.id, pieces.append):
            await executor.dispatch(task.id, priority=2)
            assert await executor.wait(task.id, timeout=60) == "completed"
            snap = await store.snapshot(task.id)
            # the last piece was relayed before the task's end event
            assert len(pieces) > 1 and "".join(p.text for p in pieces) == snap["result"]
        assert executor.answers.listening(task.id) == 0


async def killed_mid_call(store: RunStore, executor: ProcessExecutor, sim: Simulator) -> tuple[str, int]:
    """A task whose held subtask call is in flight when its child is killed (SIGKILL):
    the task's id and the dead child's pid."""
    task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
    await executor.dispatch(task.id, priority=2)
    await until(lambda: any(SUBTASK in r["text"] for r in sim.calls("worker")), "a held subtask call")
    assert executor.proc is not None
    first = executor.proc.pid
    os.kill(first, signal.SIGKILL)
    return task.id, first


async def test_a_child_that_dies_is_replaced_and_resumes_its_task(
        store: RunStore, sim_settings: Settings, sim: Simulator) -> None:
    calls = Calls()
    async with running(store, sim_settings, observers=[calls]) as executor:
        with held(sim, SUBTASK) as release:
            task_id, first = await killed_mid_call(store, executor, sim)
            await until(lambda: executor.starts == 2 and executor.proc is not None, "another child", timeout=60)
            assert executor.proc is not None and executor.proc.pid != first
            release.set()
            assert await executor.wait(task_id, timeout=60) == "completed"
        # the killed child's open calls were booked lost, at their worst case, on resume
        rows = await store.ledger_rows(task_id)
        assert any(r["status"] == "lost" for r in rows) and any(r["status"] == "ok" for r in rows)
        # and the snapshot says which, and how much of the total they are
        lost_rows = [r for r in rows if r["status"] == "lost"]
        snap = await store.snapshot(task_id)
        assert snap["worst_case"]["calls"] == len(lost_rows)
        assert snap["worst_case"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in lost_rows), abs=1e-6)
        parts = [snap["planner"], snap["synthesis"], *snap["subtasks"]]
        assert sum((p["worst_case"] or {}).get("calls", 0) for p in parts if p) == len(lost_rows)
        # and its calls in flight ended here as lost: every call observed as started ended
        await until(lambda: len(calls.finished) == calls.started, "every call's end observed")
        lost = [f for f in calls.finished if f["status"] == "lost"]
        assert 1 <= len(lost) <= sum(1 for r in rows if r["status"] == "lost")


async def test_a_cancel_asked_while_the_child_restarts_ends_the_task_in_the_next_child(
        store: RunStore, sim_settings: Settings, sim: Simulator) -> None:
    async with running(store, sim_settings) as executor:
        with held(sim, SUBTASK):
            task_id, first = await killed_mid_call(store, executor, sim)
            # asked of the dead child: the request is in the store, and the next child,
            # resuming the task, ends it canceled (the answer waits a while for that end)
            await executor.cancel(task_id)
            assert await executor.wait(task_id, timeout=60) == "canceled"
            assert executor.starts == 2 and executor.proc is not None and executor.proc.pid != first
        rows = await store.ledger_rows(task_id)
        assert rows and all(r["status"] != "reserved" for r in rows)  # every reservation settled


async def test_a_cancel_meeting_the_end_of_a_task_in_the_child_says_what_happened(
        any_store: RunStore, sim_settings: Settings, sim: Simulator) -> None:
    """The child's cancel is the remote host's (stored, Cancel to the child, its end
    awaited): the race of tests/test_cancel_race.py, 40 tasks through the child."""
    from tests.test_cancel_race import cancel_race, check_race

    sim.script.latency_rules = [("race", 0.02)]
    async with running(any_store, sim_settings.model_copy(update={"max_replans": 0})) as executor:
        said = await cancel_race(any_store, executor, 40, name="race")
        for task_id in said:  # a cancel's answer may come before the task's end (it waits a while)
            await executor.wait(task_id, timeout=60)
    await check_race(any_store, said, cost_abs=5e-7)


def _executor_children() -> list[int]:
    return [pid for pid in _children(os.getpid())
            if "compound.executor.child" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            and _alive(pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SKIPPED: reads /proc")
async def test_a_stop_while_a_dead_child_is_replaced_leaves_no_child(store: RunStore, sim_settings: Settings) -> None:
    executor = ProcessExecutor(settings=sim_settings.model_copy(update={"database_url": store.url}), store=store)
    await executor.start()
    assert executor.proc is not None
    os.kill(executor.proc.pid, signal.SIGKILL)
    await until(lambda: executor.proc is None, "the child's end to be read")  # its replacement is starting
    await executor.stop()
    reader = executor._reader
    await until(lambda: reader is None or reader.done(), "the replacing to end", timeout=60)
    assert executor.proc is None and executor.starts == 1  # none was started after the stop
    await until(lambda: not _executor_children(), "no executor process left")


async def test_a_stop_leaves_a_running_task_for_the_next_start(
        store: RunStore, sim_settings: Settings, sim: Simulator) -> None:
    with held(sim, SUBTASK) as release:
        async with running(store, sim_settings) as executor:
            task = await store.create_task(prompt=PROMPT, budget_usd=1.0)
            await executor.dispatch(task.id, priority=2)
            await until(lambda: any(SUBTASK in r["text"] for r in sim.calls("worker")), "a held subtask call")
        assert (await store.head(task.id)).status == "executing"
        release.set()
        async with running(store, sim_settings) as executor:
            assert await executor.wait(task.id, timeout=60) == "completed"


async def test_a_served_chat_client_gets_the_answer_as_the_child_streams_it(
        sim_settings: Settings, sim: Simulator) -> None:
    settings = sim_settings.model_copy(update={"rate_limit_per_minute": 1000})
    app = create_app(settings)
    async with serving(app) as served:
        assert isinstance(app.state.executor, ProcessExecutor)
        task_id, deltas, error = await streamed(served, sim)  # nothing is said before the door listens
        snap = await app.state.store.snapshot(task_id)
        assert error is None and snap["status"] == "completed", (error, snap)
        assert "".join(deltas) == snap["result"], (deltas, snap["result"])
        assert len(deltas) > 3, deltas  # as the synthesis streamed it in the child, not one chunk
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
            metrics = (await http.get("/metrics")).text
            assert 'compound_model_calls_total{kind="synthesis"' in metrics, metrics[-3000:]
            # the child's commits reach an SSE stream and a long-poll here
            auth = {"Authorization": f"Bearer {served.alice}"}
            made = (await http.post("/v1/tasks", json={"prompt": PROMPT}, headers=auth)).json()
            polled = await http.get(f"/v1/tasks/{made['id']}", params={"wait": 30},
                                    headers={**auth, "If-None-Match": '"1"'})
            assert polled.status_code == 200 and polled.json()["status"] != "queued", (polled, polled.text[:500])
            kinds, ids, last = [], [], None
            async with http.stream("GET", f"/v1/tasks/{made['id']}/events", headers=auth) as sse:
                async for line in sse.aiter_lines():  # the stream ends after the task's end
                    if line.startswith("event:"):
                        kinds.append(line.split(":", 1)[1].strip())
                    elif line.startswith("id:"):
                        ids.append(int(line.split(":", 1)[1]))
                    elif line.startswith("data:"):
                        last = json.loads(line.split(":", 1)[1])
            assert ids == list(range(1, len(ids) + 1)) and "subtask" in kinds, (ids, kinds)
            assert kinds[-1] == "task" and last is not None and last["status"] == "completed", (kinds, last)


async def test_an_executor_that_is_restarting_answers_503_in_the_error_shape(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    r = await api.http.post("/v1/tasks", json={"prompt": PROMPT}, headers=api.auth(api.alice))
    task_id = r.json()["id"]

    async def restarting(_task_id: str) -> None:
        raise ExecutorUnavailable("the executor process stopped; try again")

    monkeypatch.setattr(api.app.state.executor, "cancel", restarting)
    c = await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.auth(api.alice))
    assert c.status_code == 503
    assert c.json() == {"error": {"code": "executor_unavailable", "message": "the executor process stopped; try again"}}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SKIPPED: reads /proc")
async def test_the_child_dies_with_a_killed_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "COMPOUND_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "LITELLM_MODE": "PRODUCTION",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    server = subprocess.Popen([sys.executable, "-m", "compound.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with httpx.AsyncClient() as http:
            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                return False

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not await up():
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                assert loop.time() < deadline, "the server did not answer"
                await asyncio.sleep(0.05)
        children = _children(server.pid)
        assert len(children) == 1 and _alive(children[0])
        server.kill()
        server.wait()
        await until(lambda: not _alive(children[0]), "the executor process to die with the server")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def test_a_child_that_dies_is_reported_as_an_error(store: RunStore, sim_settings: Settings) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with running(store, sim_settings) as executor:
            assert executor.proc is not None
            os.kill(executor.proc.pid, signal.SIGKILL)
            await until(lambda: executor.starts == 2 and executor.proc is not None, "another child", timeout=60)
    died = [e for e in logs if e["log_level"] == "error" and "executor process exited" in e["event"]]
    assert len(died) == 1 and died[0]["code"] == -signal.SIGKILL


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SKIPPED: reads /proc")
async def test_sigterm_to_the_process_group_stops_server_and_child_without_an_error(tmp_path: Path) -> None:
    """What `kill %1` and systemd's stop do: the signal reaches the server and its
    executor process; the server stops the child in order, and nothing is reported."""
    port = free_port()
    env = {**os.environ, "COMPOUND_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "LITELLM_MODE": "PRODUCTION",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COMPOUND_LOG_LEVEL": "INFO"}
    server = subprocess.Popen([sys.executable, "-m", "compound.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        async with httpx.AsyncClient() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                assert server.poll() is None, "the server exited"
                assert loop.time() < deadline, "the server did not answer"
                await asyncio.sleep(0.05)
        children = _children(server.pid)
        assert len(children) == 1 and _alive(children[0])
        os.killpg(server.pid, signal.SIGTERM)
        _, err = await asyncio.to_thread(server.communicate, timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(e["level"] == "warning" for e in lines), err.decode()  # its log lines were read (no keys set)
    assert [e for e in lines if e["level"] in ("error", "critical")] == [], err.decode()
    assert "Traceback" not in err.decode()
    # uvicorn re-raises the signal once it has shut down: an end by SIGTERM, which
    # systemd counts as a clean stop
    assert server.returncode in (0, -signal.SIGTERM)
    await until(lambda: not _alive(children[0]), "the executor process to end")
