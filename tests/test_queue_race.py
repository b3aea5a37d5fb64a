"""Queue mode on PostgreSQL with two workers (real processes): 200 one-subtask tasks,
each canceled on hearing one of its last events (its call in flight, its subtask
done, its end), so the cancel meets the worker finishing the task; then 200 tasks held
at `planned`, each approved and canceled at the same moment. For every task: the
cancel's answer says what happened (200: it ended canceled; 409: it completed first),
exactly one terminal event whose status is the task's, and its books closed (no
ledger row left `reserved`, its total equal to its ledger)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import TERMINAL, Cluster
from tests.fixtures.db import postgres_available
from tests.test_scale import check_money

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

N = 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for both races: each checks its own tasks, and what it asks of the
    whole database (no ledger row over its reservation, none left reserved) holds for
    every task that has ended, the other race's too."""
    if not postgres_available():
        pytest.skip("SKIPPED: no PostgreSQL server answers on 127.0.0.1:5432")
    c = Cluster(tmp_path_factory.mktemp("race"), script={"latency_rules": [["slow race", 1.0], ["race", 0.02]]},
                env={"COMPOUND_WORKER_CONCURRENCY": "16"})
    try:
        c.start()
        c.start_workers(2)
        c.start_apis(1)
        c.wait_workers_ready(2)
        yield c
    finally:
        c.stop()


def one_subtask(name: str) -> dict[str, Any]:
    return {"subtasks": [{"description": f"race {name}", "tier_hint": 1, "depends_on": []}]}


def follow_until(c: Cluster, port: int, task_id: str, stop: Any) -> list[dict[str, Any]]:
    """The task's SSE events until stop(events) is true or the task ended."""
    seen: list[dict[str, Any]] = []
    with httpx.stream("GET", f"http://127.0.0.1:{port}/v1/tasks/{task_id}/events", headers=c.headers(),
                      timeout=httpx.Timeout(120)) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line.split(":", 1)[1]))
                if stop(seen) or (seen[-1].get("status") in TERMINAL and "index" not in seen[-1]):
                    break
    return seen


def post(c: Cluster, port: int, task_id: str, what: str) -> int:
    r = httpx.post(f"http://127.0.0.1:{port}/v1/tasks/{task_id}/{what}", headers=c.headers(), timeout=120)
    assert r.status_code in (200, 409), r.text
    return r.status_code


def check_each_task(c: Cluster, port: int, answers: dict[str, int]) -> dict[str, str]:
    """What every task ended as, after checking it against the cancel's answer."""
    done = c.wait_terminal(port, list(answers), timeout=240)
    terminal = {r[0]: (r[1], r[2]) for r in c.sql(
        "SELECT task_id, COUNT(*), MIN(data->>'status') FROM task_event WHERE kind = 'task' "
        "AND data->>'status' IN ('completed', 'partial', 'failed', 'canceled') GROUP BY task_id")}
    ended: dict[str, str] = {}
    for tid, code in answers.items():
        status = done[tid]["status"]
        assert status == ("canceled" if code == 200 else "completed"), (tid, code, status)
        assert terminal[tid] == (1, status), (tid, terminal[tid])
        ended[tid] = status
    check_money(c, list(answers))
    return ended


def test_a_cancel_meeting_the_end_of_a_task_says_what_happened(cluster: Cluster) -> None:
    c, port = cluster, cluster.apis[0]
    answers: dict[str, int] = {}
    lock = threading.Lock()

    def race(i: int) -> None:
        # One task in four takes a second a call, so a cancel on hearing it execute is
        # sure to come first, however late the events reach this client: both sides of
        # the race are run on a loaded machine too.
        slow = i % 4 == 0
        name = f"slow race {i}" if slow else f"race {i}"
        tid = c.submit(port, {"prompt": name, "plan": one_subtask(name)})["id"]
        at = 4 if slow else 4 + i % 3  # cancel on hearing: executing / the call in flight / the subtask done
        follow_until(c, port, tid, lambda seen: len(seen) >= at)
        code = post(c, port, tid, "cancel")
        with lock:
            answers[tid] = code

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(race, range(N)))
    ended = check_each_task(c, port, answers)
    assert set(ended.values()) == {"canceled", "completed"}  # both sides of the race were run
    # a call canceled in flight was booked at what is known: never at more than its reservation
    assert c.sql("SELECT COUNT(*) FROM ledger WHERE cost_usd > reserved_usd + 1e-12")[0][0] == 0


def test_approve_against_cancel_leaves_nothing_reserved(cluster: Cluster) -> None:
    c, port = cluster, cluster.apis[0]
    answers: dict[str, int] = {}
    approvals: dict[str, int] = {}
    lock = threading.Lock()

    def race(i: int) -> None:
        tid = c.submit(port, {"prompt": f"held {i}", "plan": one_subtask(f"held {i}"), "approve": False})["id"]
        follow_until(c, port, tid, lambda seen: seen[-1].get("status") == "planned")
        go = threading.Barrier(2)

        def at_once(what: str) -> int:
            go.wait()
            return post(c, port, tid, what)

        with ThreadPoolExecutor(max_workers=2) as both:
            approved, canceled = both.map(at_once, ["approve", "cancel"])
        with lock:
            answers[tid], approvals[tid] = canceled, approved

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(race, range(N)))
    ended = check_each_task(c, port, answers)
    for tid, status in ended.items():
        if status == "completed":
            assert approvals[tid] == 200, tid  # it ran because the approval came first
    assert c.sql("SELECT COUNT(*) FROM ledger WHERE status = 'reserved'")[0][0] == 0
