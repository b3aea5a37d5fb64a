"""`compound serve` as a real process: submit over HTTP and see the task complete;
then the crash test: SIGKILL the server while subtasks are in flight, start it again
on the same database, and check the task completes without calling a completed
subtask again and with its cost equal to its ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import Session

from compound.simulator import free_port
from compound.store.db import make_engine
from compound.store.models import LedgerEntry, Task

# Real processes on a possibly loaded machine: generous deadlines, all waits on state.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
COMPOUND = [sys.executable, "-m", "compound.cli.__main__"]


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    sim_port = free_port()
    script = tmp_path / "script.json"
    # the first send of each of test_crash_resume's slow subtasks hangs: its crash point is
    # "both sent and unanswered", a state the test can wait for on any machine's load
    hold = [{"status": 0, "hang_s": 600, "text": f"<subtask>\n{d}\n", "times": 1} for d in ("slow three", "slow four")]
    script.write_text(json.dumps({"latency_rules": [["quick", 0.2], ["slow", 2.5]], "failures": hold}))
    base = f"http://127.0.0.1:{sim_port}"
    e = {**os.environ, "COMPOUND_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
         "ANTHROPIC_BASE_URL": base, "OPENAI_BASE_URL": base + "/v1", "ANTHROPIC_API_KEY": "sim-key",
         "COMPOUND_RETRY_INITIAL_WAIT_S": "0", "COMPOUND_RETRY_MAX_WAIT_S": "0", "COMPOUND_SIM_URL": base}
    sim = subprocess.Popen([*COMPOUND, "sim", "--port", str(sim_port), "--script", str(script)], env=e,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the simulator never outlives the test, whatever fails
        wait_http(base + "/healthz")
        token = subprocess.run([*COMPOUND, "tokens", "create", "--user", "u"], env=e, capture_output=True,
                               text=True, check=True).stdout.strip()
        e["COMPOUND_TOKEN"] = token
        yield e
    finally:
        sim.kill()
        sim.wait()


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*COMPOUND, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    except BaseException:  # a server that did not come up is not left running
        proc.kill()
        proc.wait()
        raise
    return proc


def get(port: int, env: dict[str, str], path: str) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {env['COMPOUND_TOKEN']}"},
                  timeout=30)
    got: dict[str, Any] = r.json()
    return got


def wait_status(port: int, env: dict[str, str], task_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        snap = get(port, env, f"/v1/tasks/{task_id}")
        if snap["status"] in ("completed", "partial", "failed", "canceled"):
            return snap
        time.sleep(0.1)
    raise AssertionError(f"task still {snap['status']}")


def test_serve_submit_complete(env: dict[str, str]) -> None:
    port = free_port()
    server = start_server(env, port)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json={"prompt": "a quick look and a quick check"},
                       headers={"Authorization": f"Bearer {env['COMPOUND_TOKEN']}"})
        assert r.status_code == 202
        snap = wait_status(port, env, r.json()["id"])
        assert snap["status"] == "completed" and snap["result"]
        out = subprocess.run([*COMPOUND, "tasks", "list", "--json", "--url", f"http://127.0.0.1:{port}"],
                             env=env, capture_output=True, text=True, check=True).stdout
        assert json.loads(out)["tasks"][0]["id"] == snap["id"]
        url = ["--url", f"http://127.0.0.1:{port}"]
        shown = subprocess.run([*COMPOUND, "tasks", "show", snap["id"], "--json", *url], env=env,
                               capture_output=True, text=True, check=True).stdout
        assert json.loads(shown)["total_cost_usd"] == snap["total_cost_usd"]
        watched = subprocess.run([*COMPOUND, "tasks", "watch", snap["id"], *url], env=env,
                                 capture_output=True, text=True, check=True).stdout
        assert "cost by model" in watched and "completed" in watched
        # a running task: watch follows its event stream until it ends
        slow = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json={"prompt": "a slow look"},
                          headers={"Authorization": f"Bearer {env['COMPOUND_TOKEN']}"}).json()
        followed = subprocess.run([*COMPOUND, "tasks", "watch", slow["id"], *url], env=env,
                                  capture_output=True, text=True, check=True, timeout=60).stdout
        assert "cost by model" in followed
        assert get(port, env, f"/v1/tasks/{slow['id']}")["status"] in ("completed", "partial", "failed")
        late = subprocess.run([*COMPOUND, "tasks", "cancel", snap["id"], *url], env=env, capture_output=True, text=True)
        assert late.returncode == 1 and "409" in late.stderr
        nokey = subprocess.run([*COMPOUND, "tasks", "list", *url], env={**env, "COMPOUND_TOKEN": "cpd_wrong"},
                               capture_output=True, text=True)
        assert nokey.returncode == 1 and "401" in nokey.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)


def test_crash_resume(env: dict[str, str]) -> None:
    plan = {"subtasks": [
        {"description": "quick one", "tier_hint": 1, "depends_on": []},
        {"description": "quick two", "tier_hint": 1, "depends_on": []},
        {"description": "slow three", "tier_hint": 1, "depends_on": [0]},
        {"description": "slow four", "tier_hint": 2, "depends_on": [1]},
        {"description": "quick join", "tier_hint": 2, "depends_on": [2, 3]}]}
    port = free_port()
    server = start_server(env, port)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/tasks", json={"prompt": "crash me", "plan": plan},
                   headers={"Authorization": f"Bearer {env['COMPOUND_TOKEN']}"})
    task_id = r.json()["id"]
    deadline = time.time() + 90  # a loaded machine can take tens of seconds over its first calls
    try:
        while time.time() < deadline:
            # the crash point: 0 and 1 done, and 2 and 3 sent (the provider has them)
            st = [s["status"] for s in get(port, env, f"/v1/tasks/{task_id}")["subtasks"]]
            sent = [c["text"] for c in httpx.get(env["COMPOUND_SIM_URL"] + "/_sim/requests", timeout=30).json()]
            in_flight = all(any(f"<subtask>\n{d}\n" in t for t in sent) for d in ("slow three", "slow four"))
            if st[:4] == ["completed", "completed", "running", "running"] and in_flight:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"never reached the crash point: {st}")
    finally:  # the crash itself, or a server that never got there is not left running
        server.send_signal(signal.SIGKILL)
        server.wait()

    server = start_server(env, port)
    try:
        snap = wait_status(port, env, task_id)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    assert snap["status"] == "completed"
    calls = httpx.get(env["COMPOUND_SIM_URL"] + "/_sim/requests", timeout=30).json()
    worker = [c["text"] for c in calls if c["kind"] == "worker"]
    count = {d: sum(f"<subtask>\n{d}\n</subtask>" in t for t in worker) for d in
             ("quick one", "quick two", "slow three", "slow four", "quick join")}
    assert count == {"quick one": 1, "quick two": 1, "slow three": 2, "slow four": 2, "quick join": 1}
    engine = make_engine(env["COMPOUND_DATABASE_URL"])
    with Session(engine) as s:
        rows = list(s.exec(select(LedgerEntry).where(LedgerEntry.task_id == task_id)).scalars())  # type: ignore[call-overload]
        task = s.get(Task, task_id)
    engine.dispose()
    assert task is not None
    assert sorted(r.status for r in rows).count("lost") == 2
    lost = [r for r in rows if r.status == "lost"]
    assert all(r.cost_usd == r.reserved_usd > 0 for r in lost)
    assert task.total_cost_usd == pytest.approx(sum(r.cost_usd for r in rows), abs=1e-12)
    assert task.total_cost_usd <= task.budget_usd
