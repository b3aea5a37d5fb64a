"""A database that goes away: its connection errors become one DatabaseUnavailable
(the API answers 503 with Retry-After, never 500), a task goes on once the store is
back (never failed for it), and a planner call paid for before the plan was saved is
not paid again."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg.errors
import pytest
from psycopg_pool import PoolTimeout
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from compound.core.errors import DatabaseUnavailable
from compound.simulator import prompt_kind
from compound.store.base import RunStore
from compound.store.db import make_engine
from compound.store.models import CallKind, CallStatus
from compound.store.outage import is_unavailable, outage_as_error, unavailable
from compound.store.postgres import PostgresRunStore
from tests.fixtures.api import Api
from tests.fixtures.cluster import PG_ADMIN, Cluster, wait_until
from tests.fixtures.db import postgres_available
from tests.fixtures.fakes import FakeLLM
from tests.test_executor import executor, kind_answer
from tests.test_scale import check_money, job_plan


def _chained() -> BaseException:
    try:
        try:
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
        except psycopg.Error as inner:
            raise RuntimeError("while saving") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(("error", "outage"), [
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
    (psycopg.errors.CrashShutdown("crash"), True),
    (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
    (psycopg.errors.TooManyConnections("too many clients"), True),
    (psycopg.OperationalError("connection failed: Connection refused"), True),
    (psycopg.OperationalError("server closed the connection unexpectedly"), True),
    (PoolTimeout("couldn't get a connection after 5.00 sec"), True),
    (psycopg.OperationalError("the connection is closed"), True),
    (sa_exc.OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("x")), True),
    (sa_exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached"), True),
    (_chained(), True),
    # not an outage: the database is there and said no
    (psycopg.errors.DeadlockDetected("deadlock detected"), False),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
    (psycopg.errors.UniqueViolation("duplicate key"), False),
    (psycopg.InterfaceError("bad argument"), False),
    (sa_exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup")), False),
    (ValueError("connection"), False),
])
def test_connection_level_errors_and_only_those_are_an_outage(error: BaseException, outage: bool) -> None:
    assert is_unavailable(error) is outage
    got = unavailable(error)
    assert (got is not None) is outage
    if got is not None:
        assert got.code == "database_unavailable" and got.retry_after_s > 0


def test_an_outage_error_names_the_class_never_the_drivers_text() -> None:
    raw = psycopg.OperationalError('connection to server at "db.internal" (10.0.0.7), port 5432 failed: '
                                   'password authentication failed for user "svc_secret_user"')
    with pytest.raises(DatabaseUnavailable) as got, outage_as_error():
        raise raw
    assert got.value.__cause__ is raw
    assert "db.internal" not in got.value.message and "svc_secret_user" not in got.value.message
    assert "OperationalError" in got.value.message
    with pytest.raises(psycopg.errors.UniqueViolation), outage_as_error():  # not an outage: unchanged
        raise psycopg.errors.UniqueViolation("dup")


DOORS = {"/v1/chat/completions", "/a2a", "/v1/models", "/v1/models/{model}"}


def _concrete(path: str) -> str:
    return path.replace("{task_id}", "t_missing").replace("{model}", "compound")


async def test_every_route_answers_503_with_retry_after_while_the_database_is_gone(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    store: Any = api.app.state.store

    async def gone(*_a: Any, **_k: Any) -> Any:
        raise DatabaseUnavailable("AdminShutdown")

    # Every read and write of the store fails as it does when its connections are
    # terminated (the classification itself is tested on PostgreSQL below).
    for name in ("_read", "_write", "_core"):
        monkeypatch.setattr(store, name, gone)
    answers: dict[str, int] = {}
    for path, methods in api.app.openapi()["paths"].items():  # every documented route
        for method in sorted(m.upper() for m in methods):
            body: Any = {"prompt": "x", "budget_usd": 0.1} if method == "POST" else None
            if path == "/v1/chat/completions":
                body = {"model": "compound", "messages": [{"role": "user", "content": "hi"}]}
            if path == "/a2a":
                body = {"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "t_missing"}}
            r = await api.http.request(method, _concrete(path), json=body, headers=api.auth(api.alice))
            answers[f"{method} {path}"] = r.status_code
            if path in DOORS:  # the doors answer in their own protocols' shapes
                continue
            assert r.status_code != 500, (method, path, r.text)
            if r.status_code == 503 and "error" in r.json() and "code" in r.json()["error"]:
                assert r.json()["error"]["code"] == "database_unavailable", (method, path, r.text)
                assert int(r.headers["Retry-After"]) >= 1
                assert "AdminShutdown" in r.json()["error"]["message"]
    # the routes that read or write tasks answered 503 (the others need no database)
    for key in ("POST /v1/tasks", "GET /v1/tasks", "GET /v1/tasks/{task_id}", "POST /v1/tasks/{task_id}/cancel",
                "GET /v1/costs", "POST /task/compound", "GET /task/{task_id}/progress", "GET /tasks/recent"):
        assert answers.get(key) == 503, (key, answers)


async def test_the_doors_answer_a_gone_database_in_their_own_shapes(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    store: Any = api.app.state.store

    async def gone(*_a: Any, **_k: Any) -> Any:
        raise DatabaseUnavailable("AdminShutdown", retry_after_s=2)

    for name in ("_read", "_write", "_core"):
        monkeypatch.setattr(store, name, gone)
    chat = await api.http.post("/v1/chat/completions", headers=api.auth(api.alice), json={
        "model": "compound", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 503 and chat.headers["Retry-After"] == "2"
    error = chat.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "database_unavailable"
    assert set(error) == {"message", "type", "param", "code"}
    a2a = await api.http.post("/a2a", headers=api.auth(api.alice), json={
        "jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "t_missing"}})
    assert a2a.status_code != 500 and "-32603" not in a2a.text, a2a.text


async def test_a_store_operation_that_raises_unavailable_is_a_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    async def gone(**_k: Any) -> Any:
        raise DatabaseUnavailable("PoolTimeout", retry_after_s=3)

    monkeypatch.setattr(api.app.state.store, "create_task", gone)
    r = await api.http.post("/v1/tasks", json={"prompt": "x", "budget_usd": 0.1}, headers=api.auth(api.alice))
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert r.json() == {"error": {"code": "database_unavailable",
                                  "message": "the database is unavailable (PoolTimeout); try again in a few seconds"}}


async def test_a_drivers_outage_error_that_reached_the_api_raw_is_still_a_503(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    async def raw(**_k: Any) -> Any:
        raise sa_exc.OperationalError("INSERT", {}, psycopg.errors.AdminShutdown("terminating connection"))

    monkeypatch.setattr(api.app.state.store, "create_task", raw)
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)  # as a server answers
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.post("/v1/tasks", json={"prompt": "x", "budget_usd": 0.1}, headers=api.auth(api.alice))
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "database_unavailable"
    assert "terminating" not in r.text


# A task through an outage --------------------------------------------------------------


async def test_a_task_whose_store_went_away_goes_on_when_it_is_back(any_store: RunStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(any_store, fake)
    real_reserve = any_store.reserve
    failures = 0

    async def reserve(requests: Any) -> Any:
        nonlocal failures
        if failures < 2 and any(r.subtask is not None for r in requests):
            failures += 1  # the first fan-out's reservation, twice: the database is gone
            raise DatabaseUnavailable("AdminShutdown")
        return await real_reserve(requests)

    monkeypatch.setattr(any_store, "reserve", reserve)
    task = await any_store.create_task(prompt="find a and find b and compare", budget_usd=1.0)
    ex.submit(task.id)
    assert await ex.wait(task.id, timeout=30) == "completed"
    assert failures == 2
    rows = await any_store.ledger_rows(task.id)
    assert [r["kind"] for r in rows].count(CallKind.planner) == 1  # planned once, before the outage
    snap = await any_store.snapshot(task.id)
    assert snap["error"] is None and snap["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))


async def test_a_plan_lost_after_its_call_was_paid_is_not_paid_for_again(any_store: RunStore,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLLM(answer=kind_answer)
    ex = executor(any_store, fake, stream_plans=False)  # a streamed plan: the test after this one
    real_save = any_store.save_plan
    saves = 0

    async def save_plan(task_id: str, **kw: Any) -> None:
        nonlocal saves
        saves += 1
        if saves == 1:  # the planner call is settled; the plan's own transaction fails
            raise DatabaseUnavailable("AdminShutdown")
        await real_save(task_id, **kw)

    monkeypatch.setattr(any_store, "save_plan", save_plan)
    task = await any_store.create_task(prompt="find a and find b and compare", budget_usd=1.0)
    with pytest.raises(DatabaseUnavailable):
        await ex.run_task(task.id)
    planner = [r for r in await any_store.ledger_rows(task.id) if r["kind"] == CallKind.planner]
    assert [(r["status"], r["answer"] is not None) for r in planner] == [(CallStatus.ok, True)]
    calls_before = len(fake.calls)

    await executor(any_store, fake, stream_plans=False).run_task(task.id)  # resumed (a restart, another worker)

    snap = await any_store.snapshot(task.id)
    assert snap["status"] == "completed" and len(snap["subtasks"]) == 4
    rows = await any_store.ledger_rows(task.id)
    planner_again = [r for r in rows if r["kind"] == CallKind.planner]
    assert len(planner_again) == 1 and planner_again[0]["cost_usd"] == planner[0]["cost_usd"] > 0
    new_kinds = [prompt_kind(c.messages[0]["content"]) for c in fake.calls[calls_before:]]
    assert new_kinds.count("planner") == 0 and new_kinds.count("worker") == 4  # no planner call again
    assert snap["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))


async def test_a_streamed_plan_lost_at_its_end_resumes_with_its_stored_entries(
        any_store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLLM(answer=kind_answer)
    real_save = any_store.save_plan

    async def save_plan(task_id: str, **kw: Any) -> None:
        monkeypatch.setattr(any_store, "save_plan", real_save)  # only this once
        raise DatabaseUnavailable("AdminShutdown")

    monkeypatch.setattr(any_store, "save_plan", save_plan)
    task = await any_store.create_task(prompt="find a and find b and compare", budget_usd=1.0)
    with pytest.raises(DatabaseUnavailable):
        await executor(any_store, fake).run_task(task.id)
    before = await any_store.snapshot(task.id)
    done = {s["description"] for s in before["subtasks"] if s["status"] == "completed"}
    assert len(before["subtasks"]) == 4  # every entry was stored before the plan's end was lost
    calls_before = len(fake.calls)

    await executor(any_store, fake).run_task(task.id)  # resumed

    snap = await any_store.snapshot(task.id)
    assert snap["status"] == "completed" and len(snap["subtasks"]) == 4
    again = fake.calls[calls_before:]
    assert [prompt_kind(c.messages[0]["content"]) for c in again].count("planner") == 0  # no planner call again
    asked = {c.messages[-1]["content"].split("<subtask>\n", 1)[-1].split("\n", 1)[0] for c in again
             if prompt_kind(c.messages[0]["content"]) == "worker"}
    assert not asked & done  # what had completed is not called again
    rows = await any_store.ledger_rows(task.id)
    assert snap["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))


async def test_a_repaired_plan_is_rebuilt_from_both_paid_answers(any_store: RunStore,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first = True

    def answers(model: str, messages: Any) -> str:
        nonlocal first
        if "JSON" in messages[0]["content"] and first:
            first = False
            return "not a plan at all"
        return kind_answer(model, messages)

    fake = FakeLLM(answer=answers)
    real_save = any_store.save_plan
    saves = 0

    async def save_plan(task_id: str, **kw: Any) -> None:
        nonlocal saves
        saves += 1
        if saves == 1:
            raise DatabaseUnavailable("AdminShutdown")
        await real_save(task_id, **kw)

    monkeypatch.setattr(any_store, "save_plan", save_plan)
    task = await any_store.create_task(prompt="find a and find b and compare", budget_usd=1.0)
    with pytest.raises(DatabaseUnavailable):
        await executor(any_store, fake, stream_plans=False).run_task(task.id)
    paid = [r for r in await any_store.ledger_rows(task.id) if r["kind"] == CallKind.planner]
    assert len(paid) == 2  # the invalid answer and its repair
    calls_before = len(fake.calls)
    await executor(any_store, fake, stream_plans=False).run_task(task.id)
    assert (await any_store.snapshot(task.id))["status"] == "completed"
    assert [r["id"] for r in await any_store.ledger_rows(task.id) if r["kind"] == CallKind.planner] == \
        [r["id"] for r in paid]
    assert [prompt_kind(c.messages[0]["content"]) for c in fake.calls[calls_before:]].count("planner") == 0


async def test_a_stored_task_whose_enqueue_found_the_database_gone_is_enqueued_when_it_is_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from compound.core.settings import Settings
    from compound.llm.base import Price
    from compound.worker import backend as backend_mod
    from compound.worker.backend import QueueBackend

    monkeypatch.setattr(backend_mod, "ENQUEUE_RETRY_S", 0.01)
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/x", execution="queue")
    free = Price(input=0.0, output=0.0)
    # no store: enqueueing a stored task never reads it
    qb = QueueBackend(settings=settings, store=None, price_of=lambda _m: free)  # type: ignore[arg-type]
    tries: list[str] = []
    enqueued = asyncio.Event()

    def enqueue(workflow_id: str, priority: int, task_id: str | None = None) -> None:
        tries.append(workflow_id)
        if len(tries) <= 3:
            raise DatabaseUnavailable("AdminShutdown")
        enqueued.set()

    monkeypatch.setattr(qb.queue, "_enqueue", enqueue)
    await qb.dispatch("t_stored", priority=2)  # the POST that stored it answers 202, not 503
    await asyncio.wait_for(enqueued.wait(), timeout=30)
    assert tries == ["t_stored"] * 4
    await qb.stop()


def test_a_paused_doorbell_holds_the_queue_thread_until_resumed() -> None:
    from compound.worker.wake import Doorbell

    bell, stop = Doorbell(), threading.Event()
    polls: list[int] = []
    polled = threading.Condition()

    def queue_thread() -> None:  # as DBOS's: poll, then wait on the bell
        while True:
            with polled:
                polls.append(len(polls))
                polled.notify_all()
            if bell.wait(stop, timeout=None):
                return

    def until(check: Any) -> None:
        with polled:
            assert polled.wait_for(check, timeout=30)

    thread = threading.Thread(target=queue_thread, daemon=True)
    thread.start()
    until(lambda: len(polls) == 1)
    bell.pause()  # whether the thread sits in its wait or is about to: it parks, no poll
    assert bell.wait_parked(timeout=30)
    bell.ring()  # rings do not release a paused thread
    assert bell.wait_parked(timeout=0) and len(polls) == 1
    bell.resume()
    until(lambda: len(polls) == 2)  # it polls at once when resumed
    bell.close()
    thread.join(timeout=30)
    assert not thread.is_alive()


# On the real PostgreSQL ----------------------------------------------------------------


@pytest.mark.postgres
async def test_pooled_connections_terminated_while_idle_cost_no_request(pg_url: str) -> None:
    store = PostgresRunStore(pg_url, pool_size=4, listen=False)
    await store.open()
    try:
        task = await store.create_task(prompt="p", budget_usd=1.0)
        held = [await store.pool.getconn() for _ in range(4)]  # four at once: four distinct sessions
        pids = [conn.info.backend_pid for conn in held]
        for conn in held:
            await store.pool.putconn(conn)  # all four idle in the pool
        with store.engine.begin() as admin:
            killed = admin.execute(text("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM "
                                        "pg_stat_activity WHERE pid = ANY(:p)) k"), {"p": pids}).scalar()
        assert killed == len(set(pids)) == 4
        # every pooled connection is dead; the first operation sweeps them and goes on
        assert (await store.load(task.id)) is not None
        await store.set_status(task.id, "planning")
        assert (await store.head(task.id)).status == "planning"
    finally:
        await store.close()


@pytest.mark.postgres
async def test_events_committed_while_the_listener_was_cut_reach_its_subscribers(pg_url: str) -> None:
    here = PostgresRunStore(pg_url)  # an API process: it LISTENs
    there = PostgresRunStore(pg_url, listen=False)  # a worker: it writes
    await here.open()
    await there.open()
    try:
        task = await there.create_task(prompt="p", budget_usd=1.0)
        async with here.subscribe(task.id, after=task.event_seq) as sub:
            cut = here.listener_pid
            with there.engine.begin() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": cut})

            def gone() -> bool:
                with there.engine.connect() as conn:
                    return not conn.execute(text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"), {"p": cut}).all()

            while not await asyncio.to_thread(gone):
                await asyncio.sleep(0.05)
            # committed while nobody here listens: its NOTIFY is lost
            await there.set_status(task.id, "planning")
            ev = await asyncio.wait_for(anext(sub), timeout=30)
        assert (ev.seq, ev.data["status"]) == (task.event_seq + 1, "planning")
        assert here.listener_pid != cut
    finally:
        await there.close()
        await here.close()


@pytest.mark.postgres
async def test_a_database_that_cannot_be_reached_is_unavailable_not_a_crash() -> None:
    store = PostgresRunStore("postgresql+psycopg://postgres@127.0.0.1:1/test", pool_size=1, listen=False)
    store.pool.timeout = 0.5  # psycopg reads it per request
    await store.pool.open(wait=False)
    try:
        with pytest.raises(DatabaseUnavailable) as got:
            await store.load("t_x")
        assert got.value.code == "database_unavailable"
    finally:
        await store.pool.close(timeout=1)


# Queue mode on the real PostgreSQL: every connection of the cluster killed mid-run ----------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if not postgres_available():
        pytest.skip("SKIPPED: no PostgreSQL server answers on 127.0.0.1:5432")
    c = Cluster(tmp_path, script={"latency_rules": [["quick", 0.05], ["slow", 1.5]]},
                env={"COMPOUND_WORKER_CONCURRENCY": "8"})
    try:
        yield c.start()
    finally:
        c.stop()


class Requests:
    """A client that keeps submitting and reading tasks from another thread while the
    database goes away, and keeps every status it was answered."""

    def __init__(self, c: Cluster, port: int) -> None:
        self.c, self.port = c, port
        self.answers: list[tuple[str, int, str]] = []
        self.accepted: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        base = f"http://127.0.0.1:{self.port}"
        with httpx.Client(base_url=base, headers=self.c.headers(), timeout=60) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                r = http.post("/v1/tasks", json={"prompt": f"meanwhile {n}", "budget_usd": 0.05,
                                                 "plan": job_plan(f"meanwhile-{n}")})
                self.answers.append(("POST /v1/tasks", r.status_code, r.text))
                if r.status_code == 202:
                    self.accepted.append(r.json()["id"])
                for path in ([f"/v1/tasks/{self.accepted[-1]}"] if self.accepted else []) + ["/v1/tasks?limit=5"]:
                    r = http.get(path)
                    self.answers.append((f"GET {path.split('?')[0]}", r.status_code, r.text))

    def __enter__(self) -> Requests:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def kill_connections(c: Cluster, rounds: int, every_s: float) -> int:
    """Terminate every backend of this cluster's own databases (nobody else's), `rounds`
    times: the database is gone for about rounds * every_s, as in a restart."""
    engine = make_engine(PG_ADMIN)
    killed = 0
    try:
        for k in range(rounds):
            with engine.connect() as conn:
                killed += len(conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = ANY(:dbs) AND pid <> pg_backend_pid()"), {"dbs": c.databases}).all())
                conn.commit()
            if k + 1 < rounds:
                time.sleep(every_s)  # the outage's length, not a synchronisation
    finally:
        engine.dispose()
    return killed


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(420)
def test_queue_mode_rides_out_its_connections_killed_mid_run(cluster: Cluster) -> None:
    c = cluster
    workers = c.start_workers(2)
    api = c.start_api()
    before = c.wait_workers_ready(2)
    # half planned by the planner model (its call must not be paid twice), half with a plan
    ids = [c.submit(api, {"prompt": f"find slow facts {i} and find more and compare", "budget_usd": 0.5})["id"]
           for i in range(4)]
    ids += [c.submit(api, {"prompt": f"outage {i}", "plan": job_plan(f"outage-{i}", slow=True),
                           "budget_usd": 0.5})["id"] for i in range(4)]

    def slow_calls_in_flight() -> bool:
        return bool(c.sql("SELECT 1 FROM subtask WHERE status = 'running' AND description LIKE 'slow%'"))

    with Requests(c, api) as meanwhile:
        wait_until(slow_calls_in_flight, timeout=120, what="slow subtasks in flight", every=0.1)
        killed = kill_connections(c, rounds=15, every_s=0.1)
        # the workers hold their own liveness locks again (they did not exit)
        wait_until(lambda: c.executor_ids() == before, timeout=60, what="the workers back on their locks")
        wait_until(lambda: len(meanwhile.accepted) >= 3, timeout=120, what="tasks accepted after the outage")
    assert killed > 0
    assert all(w.poll() is None for w in workers)

    statuses = {status for _, status, _ in meanwhile.answers}
    assert 500 not in statuses, [a for a in meanwhile.answers if a[1] == 500][:3]
    assert statuses <= {200, 202, 503}, statuses
    for what, status, body in meanwhile.answers:
        if status == 503:
            assert json.loads(body)["error"]["code"] == "database_unavailable", (what, body)

    everything = ids + meanwhile.accepted
    done = c.wait_terminal(api, everything, timeout=240)
    assert {s["status"] for s in done.values()} == {"completed"}, {t: s["error"] for t, s in done.items()
                                                                   if s["status"] != "completed"}
    # No completed call paid twice: one `ok` ledger row per call of each task (the
    # planner's, each subtask's, the synthesis); a call cut by the outage is `lost`.
    rows = c.sql("SELECT task_id, kind, subtask_index, COUNT(*) FILTER (WHERE status = 'ok') FROM ledger "
                 "WHERE task_id = ANY(:t) GROUP BY task_id, kind, subtask_index", t=everything)
    assert rows and all(ok == 1 for *_, ok in rows), [r for r in rows if r[3] != 1]
    planners = [r for r in rows if r[1] == "planner"]
    assert {r[0] for r in planners} >= set(ids[:4])
    check_money(c, everything)
