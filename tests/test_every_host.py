"""Every door and route, served by each host of the engine (executor/host.py): the
plain Executor on the server's loop, the child process (`compound serve`'s default),
and queue mode (a `compound serve` and a `compound worker` on PostgreSQL). The same
synchronous HTTP client talks to each over a real socket; the simulator answers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from compound.api.app import create_app
from compound.core.settings import Settings
from compound.simulator import SimulatorThread
from compound.store.db import make_engine
from compound.store.users import create_token
from tests.fixtures.cluster import COMPOUND, TERMINAL, Cluster, wait_until
from tests.fixtures.db import postgres_available
from tests.fixtures.served import serving_in_thread
from tests.fixtures.sim import sim_model_configs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PLAN = {"subtasks": [{"description": "the history of tea", "tier_hint": 1, "depends_on": []},
                     {"description": "the costs of tea", "tier_hint": 1, "depends_on": []}]}


@dataclass
class Host:
    url: str
    alice: str
    bob: str

    def h(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def submit(self, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/v1/tasks", json=body, headers=self.h(token or self.alice), timeout=60)
        assert r.status_code == 202, r.text
        got: dict[str, Any] = r.json()
        return got

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.h(token or self.alice), timeout=60)

    def post(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", headers=self.h(token or self.alice), timeout=120, **kw)

    def ended(self, task_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            snap: dict[str, Any] = self.get(f"/v1/tasks/{task_id}").json()
            return snap if snap["status"] in TERMINAL else None

        return wait_until(done, timeout=120, what=f"task {task_id} to end", every=0.05)

    def until(self, task_id: str, status: str) -> None:
        wait_until(lambda: self.get(f"/v1/tasks/{task_id}").json()["status"] == status, timeout=120,
                   what=f"task {task_id} {status}", every=0.05)


def _settings(sim: SimulatorThread, database_url: str, **kw: Any) -> Settings:
    return Settings(database_url=database_url, planner_model="anthropic/claude-haiku-4-5",
                    tier1_models=["anthropic/claude-haiku-4-5"], tier2_models=["anthropic/claude-sonnet-4-5"],
                    tier3_models=["anthropic/claude-opus-4-5"], models=sim_model_configs(sim.url),
                    retry_initial_wait_s=0.0, retry_max_wait_s=0.0, call_timeout_s=30.0, rate_limit_per_minute=0,
                    **kw)


@pytest.fixture(scope="module", params=["loop", "process", "queue"])
def host(request: pytest.FixtureRequest, sim_server: SimulatorThread,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp(request.param)
    if request.param != "queue":
        settings = _settings(sim_server, f"sqlite:///{workdir / 'compound.db'}",
                             executor_process=request.param == "process")
        app = create_app(settings)
        with serving_in_thread(app) as url:
            engine = make_engine(settings.database_url)
            alice, bob = (create_token(engine, n)[1] for n in ("alice", "bob"))
            engine.dispose()
            yield Host(url, alice, bob)
        return
    if not postgres_available():
        pytest.skip("SKIPPED: no PostgreSQL server answers on 127.0.0.1:5432")
    c = Cluster(workdir, script={"latency_rules": [["tea", 0.01]]})
    try:
        c.start()
        c.start_workers(1)
        port = c.start_api()
        c.wait_workers_ready(1)
        bob = subprocess.run([*COMPOUND, "tokens", "create", "--user", "bob"], env=c.env, capture_output=True,
                             text=True, check=True).stdout.strip()
        yield Host(f"http://127.0.0.1:{port}", c.env["COMPOUND_TOKEN"], bob)
    finally:
        c.stop()


def test_submit_read_list_and_another_users_404(host: Host) -> None:
    task = host.submit({"prompt": "tea", "plan": PLAN})
    snap = host.ended(task["id"])
    assert snap["status"] == "completed" and snap["result"] and snap["total_cost_usd"] > 0
    assert [s["status"] for s in snap["subtasks"]] == ["completed", "completed"]
    listed = host.get("/v1/tasks?limit=100").json()["tasks"]
    assert task["id"] in [t["id"] for t in listed]
    for r in (host.get(f"/v1/tasks/{task['id']}", host.bob), host.post(f"/v1/tasks/{task['id']}/cancel", host.bob),
              host.post(f"/v1/tasks/{task['id']}/approve", host.bob), host.get(f"/task/{task['id']}/progress", host.bob)):
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    assert task["id"] not in [t["id"] for t in host.get("/v1/tasks", host.bob).json()["tasks"]]


def test_a_cancel_after_the_end_answers_409_and_changes_nothing(host: Host) -> None:
    task = host.submit({"prompt": "tea", "plan": PLAN})
    before = host.ended(task["id"])
    r = host.post(f"/v1/tasks/{task['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text
    assert host.get(f"/v1/tasks/{task['id']}").json()["status"] == before["status"] == "completed"


def test_a_held_task_is_approved_and_another_canceled(host: Host) -> None:
    held = host.submit({"prompt": "tea", "plan": PLAN, "approve": False})
    dropped = host.submit({"prompt": "tea", "plan": PLAN, "approve": False})
    host.until(held["id"], "planned")
    host.until(dropped["id"], "planned")
    assert host.post(f"/v1/tasks/{held['id']}/approve").status_code == 200
    r = host.post(f"/v1/tasks/{dropped['id']}/cancel")
    assert r.status_code == 200, r.text
    assert host.ended(held["id"])["status"] == "completed"
    snap = host.ended(dropped["id"])
    assert snap["status"] == "canceled" and snap["total_cost_usd"] == 0


def test_the_event_stream_ends_with_one_terminal_event(host: Host) -> None:
    task = host.submit({"prompt": "tea", "plan": PLAN})
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    with httpx.stream("GET", f"{host.url}/v1/tasks/{task['id']}/events", headers=host.h(host.alice),
                      timeout=httpx.Timeout(120)) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    statuses = [d["status"] for k, d in events if k == "task"]
    assert statuses[0] == "queued" and statuses[-1] == "completed"
    assert sum(1 for s in statuses if s in TERMINAL) == 1


def test_the_openai_door_plain_and_streamed(host: Host) -> None:
    body = {"model": "compound", "messages": [{"role": "user", "content": "the history of tea and its costs"}]}
    r = host.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{host.url}/v1/chat/completions", headers=host.h(host.alice),
                      json={**body, "stream": True}, timeout=httpx.Timeout(120)) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    text = "".join((json.loads(line[5:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for line in lines[:-1])
    assert text


def test_the_symbiont_routes(host: Host) -> None:
    r = host.post("/task/compound", json={"prompt": "the history of tea and the costs of tea"})
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["subtask_count"] >= 1
    host.ended(made["id"])
    progress = host.get(f"/task/{made['id']}/progress").json()
    assert progress["status"] == "completed"
    assert made["id"] in [t["id"] for t in host.get("/tasks/recent").json()]


def test_the_a2a_card_and_mcp_need_a_token(host: Host) -> None:
    assert httpx.get(f"{host.url}/.well-known/agent-card.json", timeout=30).status_code == 200
    r = httpx.post(f"{host.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=30)
    assert r.status_code == 401
