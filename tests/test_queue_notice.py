"""Queue mode says when no worker is alive: a queued task's snapshot carries a notice
(and `compound tasks show` prints it) while no `compound worker` holds its liveness
lock; once one lives the notice goes and the task runs. On real PostgreSQL, each test
on a fresh database (other tests' workers hold locks in the shared one)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from compound.store.db import make_engine
from compound.worker.liveness import NO_WORKER_NOTICE, Liveness, WorkerWatch
from tests.fixtures.cluster import COMPOUND, PG_ADMIN, Cluster, wait_until
from tests.fixtures.db import postgres_available

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(420)]


@pytest.fixture
def fresh_db() -> Iterator[str]:
    if not postgres_available():
        pytest.skip("SKIPPED: no PostgreSQL server answers on 127.0.0.1:5432")
    name = f"c_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_ADMIN)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def test_the_watch_tells_whether_a_worker_holds_its_lock(fresh_db: str) -> None:
    watch = WorkerWatch(fresh_db, every_s=0)  # no reuse: every question reads
    assert await watch.any_alive() is False
    assert await watch.notice() == NO_WORKER_NOTICE
    worker = Liveness(fresh_db)
    try:
        assert await worker.claim(f"worker-test-{uuid.uuid4().hex}")
        assert await watch.any_alive() is True
        assert await watch.notice() is None
    finally:
        await worker.close()
    lingering = WorkerWatch(fresh_db, every_s=3600)  # one read, then the answer is reused
    assert await lingering.notice() == NO_WORKER_NOTICE
    assert await WorkerWatch(fresh_db.rsplit("/", 1)[0] + "/no_such_database", every_s=0).any_alive() is None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if not postgres_available():
        pytest.skip("SKIPPED: no PostgreSQL server answers on 127.0.0.1:5432")
    c = Cluster(tmp_path)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.mark.slow
def test_a_queued_task_says_no_worker_is_alive_until_one_starts(cluster: Cluster) -> None:
    port = cluster.start_api()
    task = cluster.submit(port, {"prompt": "look up a and look up b", "budget_usd": 0.5})
    snap: dict[str, Any] = cluster.get(port, f"/v1/tasks/{task['id']}")
    assert snap["status"] == "queued" and snap["notice"] == NO_WORKER_NOTICE
    shown = subprocess.run([*COMPOUND, "tasks", "show", task["id"], "--url", f"http://127.0.0.1:{port}"],
                           env={**cluster.env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "note: no compound worker is alive to take this task" in " ".join(shown.stdout.split())
    cluster.start_worker()
    cluster.wait_workers_ready(1)
    done = cluster.wait_terminal(port, [task["id"]])[task["id"]]
    assert done["status"] == "completed" and "notice" not in done
    other = cluster.submit(port, {"prompt": "look up c", "budget_usd": 0.5, "approve": False})
    held = wait_until(lambda: (s := cluster.get(port, f"/v1/tasks/{other['id']}"))["status"] == "planned" and s,
                      timeout=120, what="the held task's plan")
    assert "notice" not in held  # only a queued task waits for a worker
    cluster.stop()  # SIGTERM to each: a clean stop, nothing reported as an error
    for log in cluster.workdir.glob("*.log"):
        written = log.read_text(errors="replace")
        assert '"level": "error"' not in written and "Traceback" not in written, (log.name, written[-2000:])
