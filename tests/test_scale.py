"""Queue mode as real processes on PostgreSQL: two `compound serve` and two `compound
worker` against the provider simulator, each test on fresh databases. Every wait is
on state, with a generous deadline (a loaded 2-core machine)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.db import postgres_available

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(420)]

SONNET = "anthropic/claude-sonnet-4-5"


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Any]:
    if not postgres_available():
        pytest.skip("SKIPPED: no PostgreSQL server answers on 127.0.0.1:5432")
    made: list[Cluster] = []

    def make(**kw: Any) -> Cluster:
        c = Cluster(tmp_path, **kw)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()


def job_plan(name: str, *, slow: bool = False) -> dict[str, Any]:
    """Two parts, then one that joins them: three subtasks plus the synthesis."""
    pace = "slow" if slow else "quick"
    return {"subtasks": [
        {"description": f"{pace} part A of {name}", "tier_hint": 1, "depends_on": []},
        {"description": f"{pace} part B of {name}", "tier_hint": 1, "depends_on": []},
        {"description": f"quick join of {name}", "tier_hint": 2, "depends_on": [0, 1]}]}


def worker_calls(c: Cluster) -> dict[str, int]:
    """How many times the provider was asked each subtask (by its description)."""
    out: dict[str, int] = {}
    for r in c.sim_requests():
        if r["kind"] == "worker":
            desc = r["text"].split("<subtask>", 1)[1].split("</subtask>", 1)[0].strip()
            out[desc] = out.get(desc, 0) + 1
    return out


def check_money(c: Cluster, task_ids: list[str]) -> None:
    """Every task's total equals its ledger, and stays within its budget."""
    rows = c.sql("SELECT t.id, t.total_cost_usd, t.budget_usd, COALESCE(SUM(l.cost_usd), 0), "
                 "COUNT(l.id) FILTER (WHERE l.status = 'reserved') FROM task t "
                 "LEFT JOIN ledger l ON l.task_id = t.id GROUP BY t.id")
    by_id = {r[0]: r for r in rows}
    for tid in task_ids:
        _, total, budget, ledger, open_rows = by_id[tid]
        assert total == pytest.approx(ledger, abs=1e-9), tid
        assert total <= budget + 1e-12, tid
        assert open_rows == 0, tid


def sse_events(port: int, c: Cluster, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The task's whole SSE stream from one API (it ends with the task)."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    with httpx.stream("GET", f"http://127.0.0.1:{port}/v1/tasks/{task_id}/events", headers=c.headers(),
                      timeout=httpx.Timeout(120)) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    return events


def test_two_apis_two_workers(cluster_factory: Any) -> None:
    """50 tasks across two APIs and two workers; a per-model cap that holds across both
    workers (the joins and syntheses all go to one capped model)."""
    cap = 3
    c: Cluster = cluster_factory(script={"latency_rules": [["join of", 0.3], ["quick", 0.05], ["slow", 1.0]]},
                                 env={"COMPOUND_WORKER_CONCURRENCY": "4", "COMPOUND_TIER2_MODELS": SONNET},
                                 config_toml=f'[models."{SONNET}"]\nmax_concurrency = {cap}\n')
    c.start_workers(2)
    apis = c.start_apis(2)
    c.wait_workers_ready(2)

    ids = [c.submit(apis[i % 2], {"prompt": f"job {i}", "plan": job_plan(f"job-{i}")})["id"] for i in range(50)]
    # SSE from the API that did not take the task sees the worker's progress.
    streams = {tid: sse_events(apis[(i + 1) % 2], c, tid) for i, tid in enumerate(ids[:2])}
    done = c.wait_terminal(apis[0], ids, timeout=240)

    assert {s["status"] for s in done.values()} == {"completed"}
    for events in streams.values():
        statuses = [d["status"] for k, d in events if k == "task"]
        assert statuses[0] == "queued" and statuses[-1] == "completed" and "executing" in statuses
        assert sum(1 for k, d in events if k == "subtask" and d["status"] == "completed") == 3
    calls = worker_calls(c)
    expected = {f"{p} of job-{i}" for i in range(50) for p in ("quick part A", "quick part B", "quick join")}
    assert set(calls) == expected
    assert set(calls.values()) == {1}  # each subtask answered once at the provider
    assert len([r for r in c.sim_requests() if r["kind"] == "synthesizer"]) == 50
    check_money(c, ids)
    # The work was shared: both workers ran tasks, and called the capped model.
    runners = c.sql("SELECT DISTINCT executor_id FROM dbos.workflow_status WHERE status = 'SUCCESS'")
    assert len(runners) == 2
    # Never more calls in flight than the cap, all workers together; and the cap was
    # reached (each worker alone could have sent 3: the demand was higher).
    assert c.sim_stats()["peak"][SONNET.split("/", 1)[1]] == cap

    # Approve and cancel reach a task from either API, wherever it runs.
    held = c.submit(apis[0], {"prompt": "held", "plan": job_plan("held"), "approve": False})["id"]
    wait_until(lambda: c.get(apis[1], f"/v1/tasks/{held}")["status"] == "planned", timeout=60, what="planned")
    r = httpx.post(f"http://127.0.0.1:{apis[1]}/v1/tasks/{held}/approve", headers=c.headers(), timeout=30)
    assert r.status_code == 200, r.text
    assert c.wait_terminal(apis[0], [held], timeout=60)[held]["status"] == "completed"

    slow = c.submit(apis[0], {"prompt": "to cancel", "plan": job_plan("cancelled", slow=True)})["id"]
    wait_until(lambda: any(s["status"] == "running" for s in c.get(apis[0], f"/v1/tasks/{slow}")["subtasks"]),
               timeout=60, what="a running subtask")
    r = httpx.post(f"http://127.0.0.1:{apis[1]}/v1/tasks/{slow}/cancel", headers=c.headers(), timeout=30)
    assert r.status_code == 200, r.text
    snap = c.wait_terminal(apis[0], [slow], timeout=60)[slow]
    assert snap["status"] == "canceled"
    assert all(s["status"] == "canceled" for s in snap["subtasks"])
    check_money(c, [held, slow])


def test_kill_worker_mid_task(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(script={"latency_rules": [["quick", 0.05], ["slow", 2.0]]},
                                 separate_system_db=True, env={"COMPOUND_WORKER_CONCURRENCY": "4"})
    victim = c.start_worker()
    api = c.start_api()
    c.wait_workers_ready(1)
    victim_id = c.executor_of(victim)
    ids = [c.submit(api, {"prompt": f"kill {i}", "plan": job_plan(f"kill-{i}", slow=True),
                          "budget_usd": 0.05})["id"] for i in range(6)]
    survivor = c.start_worker()

    sys_db = c.env["COMPOUND_DBOS_SYSTEM_DATABASE_URL"]

    def victim_tasks() -> list[str]:
        from sqlalchemy import text

        from compound.store.db import make_engine
        eng = make_engine(sys_db)
        try:
            with eng.connect() as conn:
                return [r[0] for r in conn.execute(text(
                    "SELECT workflow_uuid FROM dbos.workflow_status WHERE status = 'PENDING' AND executor_id = :e"),
                    {"e": victim_id})]
        finally:
            eng.dispose()

    def in_flight_on_victim() -> list[str]:
        # the kill point: the victim runs tasks whose slow subtasks the provider is answering
        mine = victim_tasks()
        if not mine:
            return []
        running = c.sql("SELECT task_id, description FROM subtask WHERE status = 'running' "
                        "AND description LIKE 'slow%' AND task_id = ANY(:t)", t=mine)
        if not running:
            return []
        sent = set(worker_calls(c))
        return [tid for tid, desc in running if desc in sent]

    wait_until(in_flight_on_victim, timeout=120, what="slow calls in flight on the first worker", every=0.2)
    completed_before = {desc for (desc,) in c.sql("SELECT description FROM subtask WHERE status = 'completed'")}
    orphans = victim_tasks()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    # A live worker takes the dead one's tasks (DBOS recovery after liveness). About a
    # second on an idle machine (bench/scale_bench.py); the bound is wide because the suite
    # runs on several workers at once and the cluster's processes share two cores with them.
    wait_until(lambda: not victim_tasks(), timeout=90, what="the dead worker's tasks to be resumed")
    done = c.wait_terminal(api, ids, timeout=180)
    assert {s["status"] for s in done.values()} == {"completed"}
    assert survivor.poll() is None

    calls = worker_calls(c)
    for desc in completed_before:
        assert calls[desc] == 1, desc  # a completed subtask is never called again
    ledger = c.sql("SELECT s.description, COUNT(*), COUNT(*) FILTER (WHERE l.status = 'ok'), "
                   "COUNT(*) FILTER (WHERE l.status = 'lost' AND l.cost_usd = l.reserved_usd) "
                   "FROM ledger l JOIN subtask s ON s.task_id = l.task_id AND s.index = l.subtask_index "
                   "GROUP BY s.description")
    for desc, n, ok, lost in ledger:
        assert ok == 1, desc
        assert calls[desc] == n, desc  # every call the provider saw is in the ledger
        assert n == ok + lost, desc  # the repeats are the lost in-flight calls, at their worst case
    assert sum(lost for _, _, _, lost in ledger) >= 1
    assert set(orphans) <= set(ids)
    check_money(c, ids)


def test_global_task_cap_holds_across_workers(cluster_factory: Any) -> None:
    """COMPOUND_QUEUE_CONCURRENCY caps the tasks running at once, all workers together.
    Each task is one subtask then its synthesis (one call in flight at a time), all on
    one model: the simulator's peak of calls in flight is the peak of tasks running."""
    haiku = "anthropic/claude-haiku-4-5"
    c: Cluster = cluster_factory(
        script={"latency_s": 0.5},
        env={"COMPOUND_QUEUE_CONCURRENCY": "2", "COMPOUND_WORKER_CONCURRENCY": "2",
             "COMPOUND_TIER1_MODELS": haiku, "COMPOUND_TIER2_MODELS": haiku})
    c.start_workers(2)
    api = c.start_api()
    c.wait_workers_ready(2)
    one = {"subtasks": [{"description": "the only step", "tier_hint": 1, "depends_on": []}]}
    ids = [c.submit(api, {"prompt": f"capped {i}", "plan": one})["id"] for i in range(8)]
    done = c.wait_terminal(api, ids, timeout=240)
    assert {s["status"] for s in done.values()} == {"completed"}
    # Each worker alone may run 2: without the global cap 4 could run at once.
    assert c.sim_stats()["peak"][haiku.split("/", 1)[1]] == 2
    check_money(c, ids)


def planning_order(c: Cluster, task_ids: list[str]) -> list[str]:
    """The tasks in the order they began (their `planning` events)."""
    rows = c.sql("SELECT task_id FROM task_event WHERE task_id = ANY(:t) AND kind = 'task' "
                 "AND data::json->>'status' = 'planning' ORDER BY created_at", t=task_ids)
    return [r[0] for r in rows]


def test_workers_are_woken_and_take_urgent_tasks_first(cluster_factory: Any) -> None:
    """The worker polls the queue once a minute, yet every task starts long before that:
    the API's NOTIFY after each enqueue wakes it, and so does the end of one of its own
    tasks when others wait (one task at a time here). What waits goes by priority."""
    c: Cluster = cluster_factory(script={"latency_rules": [["slow", 3.0]], "latency_s": 0.05},
                                 env={"COMPOUND_QUEUE_POLLING_INTERVAL_S": "60", "COMPOUND_WORKER_CONCURRENCY": "1"})
    c.start_worker()
    api = c.start_api()
    c.wait_workers_ready(1)
    first = c.submit(api, {"prompt": "first", "plan": job_plan("first", slow=True)})["id"]
    # Well within the minute a poll would take: the wake-up on enqueue.
    wait_until(lambda: any(s["status"] == "running" for s in c.get(api, f"/v1/tasks/{first}")["subtasks"]),
               timeout=30, what="the first task running")
    later = [c.submit(api, {"prompt": f"later {i}", "plan": job_plan(f"later-{i}"), "priority": 3})["id"]
             for i in range(2)]
    urgent = c.submit(api, {"prompt": "urgent", "plan": job_plan("urgent"), "priority": 0})["id"]
    assert planning_order(c, [first, *later, urgent]) == [first]  # the worker's one slot is still taken
    done = c.wait_terminal(api, [first, *later, urgent], timeout=40)
    assert {s["status"] for s in done.values()} == {"completed"}
    assert planning_order(c, [first, *later, urgent]) == [first, urgent, *later]


def drains_begun(c: Cluster) -> int:
    return sum(p.read_text(errors="replace").count("worker draining") for p in c.workdir.glob("worker-*.log"))


def test_sigterm_drains_a_worker(cluster_factory: Any) -> None:
    """SIGTERM: the worker takes no new task, finishes the one it runs (each call once,
    nothing lost), and exits; the task sent meanwhile runs on another worker. A second
    SIGTERM cuts the drain short: the task left is resumed by the next worker."""
    c: Cluster = cluster_factory(script={"latency_rules": [["slow", 2.0], ["glacial", 20.0]], "latency_s": 0.05},
                                 env={"COMPOUND_WORKER_DRAIN_S": "120"})
    leaving = c.start_worker()
    api = c.start_api()
    c.wait_workers_ready(1)
    leaving_id = c.executor_of(leaving)
    running = c.submit(api, {"prompt": "running", "plan": job_plan("drained", slow=True)})["id"]
    wait_until(lambda: any(s["status"] == "running" for s in c.get(api, f"/v1/tasks/{running}")["subtasks"]),
               timeout=60, what="a running subtask")
    leaving.send_signal(signal.SIGTERM)
    wait_until(lambda: drains_begun(c) == 1, timeout=60, what="the drain to begin")
    sent_after = c.submit(api, {"prompt": "after", "plan": job_plan("after")})["id"]

    assert leaving.wait(timeout=120) == 0  # it left once its task had ended, on its own
    assert c.get(api, f"/v1/tasks/{running}")["status"] == "completed"
    assert c.get(api, f"/v1/tasks/{sent_after}")["status"] == "queued"  # nobody took it
    second = c.start_worker()
    assert c.wait_terminal(api, [sent_after], timeout=60)[sent_after]["status"] == "completed"
    runners = dict(c.sql("SELECT workflow_uuid, executor_id FROM dbos.workflow_status"))
    assert runners[running] == leaving_id and runners[sent_after] != leaving_id
    assert set(worker_calls(c).values()) == {1}
    assert c.sql("SELECT count(*) FROM ledger WHERE status <> 'ok'")[0][0] == 0
    check_money(c, [running, sent_after])

    # Twice: the second worker stops without waiting for its 20 s calls.
    stuck = c.submit(api, {"prompt": "stuck", "plan": {"subtasks": [
        {"description": "glacial part of stuck", "tier_hint": 1, "depends_on": []}]}})["id"]
    wait_until(lambda: any(s["status"] == "running" for s in c.get(api, f"/v1/tasks/{stuck}")["subtasks"]),
               timeout=60, what="the glacial call in flight")
    second.send_signal(signal.SIGTERM)
    wait_until(lambda: drains_begun(c) == 2, timeout=60, what="the second drain to begin")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    assert c.get(api, f"/v1/tasks/{stuck}")["status"] == "executing"  # left unfinished, not completed
    c.start_worker()
    assert c.wait_terminal(api, [stuck], timeout=120)[stuck]["status"] == "completed"
    check_money(c, [stuck])


def test_a_chat_client_gets_the_answer_as_the_worker_streams_it(cluster_factory: Any) -> None:
    """Queue mode: the API's door listens, tells the workers (NOTIFY), and the worker
    running the task streams its synthesis to it piece by piece (signals/postgres.py). The
    subtasks take 1.5 s at the simulator, so the door's word is there long before."""
    import openai

    c: Cluster = cluster_factory(script={"latency_rules": [["Work out:", 1.5]]})
    c.start_workers(1)
    api = c.start_api()
    c.wait_workers_ready(1)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{api}/v1", api_key=c.env["COMPOUND_TOKEN"], max_retries=0,
                           timeout=120)
    prompt = "Look into the history of tea and the costs of tea and the risks of tea"
    chunks = list(client.chat.completions.create(model="compound", messages=[{"role": "user", "content": prompt}],
                                                 stream=True))
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    snap = c.get(api, f"/v1/tasks/{chunks[0].id}")
    assert snap["status"] == "completed", snap
    assert "".join(deltas) == snap["result"], (deltas, snap["result"])
    assert len(deltas) > 3, deltas  # as the worker's synthesis streamed it, not one chunk at the end
    assert len([r for r in c.sim_requests() if r["kind"] == "synthesizer"]) == 1  # streamed once, not retried
