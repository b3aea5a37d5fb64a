"""GET /v1/tasks/{id}: the snapshot serialized once, ETag = the task's event sequence,
If-None-Match answering 304, and the parameters of the long-poll."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Receive, Scope, Send

from compound.api.routes_tasks import read_wait
from compound.api.schemas import TaskOut
from compound.api.snapshots import SnapshotCache, etag_matches, version_of
from compound.core.errors import NotFound, UserInputError
from compound.store.base import RunStore
from tests.fixtures.api import Api

PLAN = {"reasoning": "two then one", "subtasks": [
    {"description": "first", "tier_hint": 1, "depends_on": []},
    {"description": "second", "tier_hint": 2, "depends_on": []},
    {"description": "join", "tier_hint": 2, "depends_on": [0, 1]}]}


@pytest.mark.parametrize(("header", "etag", "matches"), [
    ('"7"', '"7"', True),
    ('W/"7"', '"7"', True),
    ('"6", "7"', '"7"', True),
    ("*", '"7"', True),
    ('"6"', '"7"', False),
    ('"70"', '"7"', False),
    ("7", '"7"', False),  # an ETag is quoted
    ("", '"7"', False),
])
def test_if_none_match(header: str, etag: str, matches: bool) -> None:
    assert etag_matches(header, etag) is matches


@pytest.mark.parametrize(("header", "version"), [
    ('"7"', 7), ('W/"12"', 12), ('"x", "3"', 3), ("*", None), (None, None), ('"-1"', None),
    ('"99999999999999999999"', None),
])
def test_the_version_a_client_holds(header: str | None, version: int | None) -> None:
    assert version_of(header) == version


@pytest.mark.parametrize(("query", "out"), [
    ({}, (None, None)),
    ({"wait": "0.5"}, (0.5, None)),
    ({"wait": "30", "since": "4"}, (30.0, 4)),
    ({"since": "0"}, (None, 0)),
])
def test_wait_and_since(query: dict[str, str], out: tuple[float | None, int | None]) -> None:
    assert read_wait(query) == out


@pytest.mark.parametrize(("query", "name"), [
    ({"wait": "0"}, "wait"), ({"wait": "-1"}, "wait"), ({"wait": "30.5"}, "wait"), ({"wait": "soon"}, "wait"),
    ({"wait": "nan"}, "wait"), ({"wait": "inf"}, "wait"), ({"wait": ""}, "wait"),
    ({"since": "-1"}, "since"), ({"since": "1.5"}, "since"), ({"since": "x"}, "since"),
])
def test_bad_wait_and_since_are_refused(query: dict[str, str], name: str) -> None:
    with pytest.raises(UserInputError, match=f"^{name}: "):
        read_wait(query)


async def finished(api: Api) -> str:
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    task_id = str(r.json()["id"])
    await api.app.state.executor.wait(task_id, timeout=60)
    return task_id


async def test_etag_is_the_event_sequence_and_if_none_match_answers_304(api: Api) -> None:
    task_id = await finished(api)
    r = await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))
    assert r.status_code == 200
    seq = (await api.app.state.store.head(task_id)).event_seq
    assert seq > 1 and r.headers["etag"] == f'"{seq}"'
    for header in (f'"{seq}"', f'W/"{seq}"', f'"1", "{seq}"', "*"):
        again = await api.http.get(f"/v1/tasks/{task_id}", headers={**api.auth(api.alice), "If-None-Match": header})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == f'"{seq}"'
    stale = await api.http.get(f"/v1/tasks/{task_id}", headers={**api.auth(api.alice), "If-None-Match": '"1"'})
    assert stale.status_code == 200 and stale.content == r.content


async def test_the_body_is_the_snapshot_in_the_documented_shape(api: Api) -> None:
    task_id = await finished(api)
    r = await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    # the store's snapshot as the documented shape sends it: money rounded on the way out
    assert body == TaskOut.model_validate(await api.app.state.store.snapshot(task_id)).model_dump(mode="json")
    assert TaskOut.model_validate(body).model_dump(mode="json") == body
    assert json.loads(r.content) == body and body["status"] == "completed"


async def test_a_finished_task_is_read_from_the_store_once(api: Api) -> None:
    task_id = await finished(api)
    cache = api.app.state.snapshots
    await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))
    loads = cache.loads
    for _ in range(5):
        assert (await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))).status_code == 200
    assert cache.loads == loads


async def test_another_users_task_is_404_whatever_the_headers(api: Api) -> None:
    task_id = await finished(api)
    mine = await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))
    unknown = await api.http.get("/v1/tasks/t_nope", headers=api.auth(api.bob))
    for extra in ({}, {"If-None-Match": mine.headers["etag"]}, {"If-None-Match": "*"}):
        r = await api.http.get(f"/v1/tasks/{task_id}?wait=1", headers={**api.auth(api.bob), **extra})
        assert r.status_code == 404 and "etag" not in r.headers
        assert r.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
    assert (await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.admin))).status_code == 200


@pytest.mark.parametrize("query", ["wait=0", "wait=31", "wait=soon", "since=-2", "wait=1&since=x"])
async def test_bad_wait_values_are_422(api: Api, query: str) -> None:
    task_id = await finished(api)
    r = await api.http.get(f"/v1/tasks/{task_id}?{query}", headers=api.auth(api.alice))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["message"].startswith(query.split("&")[-1].split("=")[0] + ": ")


async def test_auth_on_the_fast_route_matches_the_others(api: Api) -> None:
    task_id = await finished(api)
    url = f"/v1/tasks/{task_id}"
    assert (await api.http.get(url)).status_code == 401
    assert (await api.http.get(url, headers={"Authorization": f"Basic {api.alice}"})).status_code == 401
    assert (await api.http.get(url, headers={"Authorization": "Bearer cpd_wrong"})).status_code == 401
    r = await api.http.get(url, headers={"Authorization": "Bearer"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (await api.http.get(url, headers={"Authorization": f"bearer {api.alice}"})).status_code == 200
    assert (await api.http.get(url, headers=api.auth(api.reader))).status_code == 404  # carol's read scope: not hers


async def held(api: Api) -> tuple[str, str]:
    """A task waiting for approval at `planned` (it changes only when approved), and its ETag."""
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN, "approve": False},
                            headers=api.auth(api.alice))
    task_id = str(r.json()["id"])
    async with asyncio.timeout(20):
        while True:
            got = await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))
            if got.json()["status"] == "planned":
                return task_id, got.headers["etag"]
            async with api.app.state.store.subscribe(task_id, after=int(got.headers["etag"].strip('"'))) as sub:
                await anext(sub)


def listeners(api: Api, task_id: str) -> set[object]:
    """The queues subscribed to the task's events in the store's hub."""
    return set(api.app.state.store.hub._subs.get(task_id, ()))


async def test_a_long_poll_answers_when_the_task_changes(api: Api) -> None:
    task_id, etag = await held(api)
    before = listeners(api, task_id)  # the snapshot cache's own (and any of the executor's)
    headers = {**api.auth(api.alice), "If-None-Match": etag}
    poll = asyncio.create_task(api.http.get(f"/v1/tasks/{task_id}?wait=30", headers=headers))
    async with asyncio.timeout(10):
        while not listeners(api, task_id) - before:  # the long-poll has subscribed
            await asyncio.sleep(0.005)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not poll.done()  # subscribed, and nothing has changed
    assert (await api.http.post(f"/v1/tasks/{task_id}/approve", headers=api.auth(api.alice))).status_code == 200
    async with asyncio.timeout(10):
        r = await poll
    assert r.status_code == 200 and int(r.headers["etag"].strip('"')) > int(etag.strip('"'))
    assert r.json()["status"] != "planned"
    await api.app.state.executor.wait(task_id, timeout=60)  # let it end before the app stops


async def test_a_long_poll_that_times_out_answers_unchanged(api: Api) -> None:
    task_id, etag = await held(api)
    r = await api.http.get(f"/v1/tasks/{task_id}?wait=0.05", headers={**api.auth(api.alice), "If-None-Match": etag})
    assert r.status_code == 304 and r.headers["etag"] == etag
    seq = etag.strip('"')
    r = await api.http.get(f"/v1/tasks/{task_id}?wait=0.05&since={seq}", headers=api.auth(api.alice))
    assert r.status_code == 200 and r.headers["etag"] == etag and r.json()["status"] == "planned"
    assert len(listeners(api, task_id)) == 1  # the long-polls' subscriptions are gone; the cache's stays


async def test_a_long_poll_behind_or_on_a_finished_task_answers_at_once(api: Api) -> None:
    task_id, etag = await held(api)
    async with asyncio.timeout(10):  # a wait of 30 s would trip this
        r = await api.http.get(f"/v1/tasks/{task_id}?wait=30&since=0", headers=api.auth(api.alice))
        assert r.status_code == 200 and r.headers["etag"] == etag
        done = await finished(api)
        last = (await api.http.get(f"/v1/tasks/{done}", headers=api.auth(api.alice))).headers["etag"]
        r = await api.http.get(f"/v1/tasks/{done}?wait=30", headers={**api.auth(api.alice), "If-None-Match": last})
        assert r.status_code == 304


async def test_the_cache_keeps_a_snapshot_until_its_task_has_an_event(any_store: RunStore) -> None:
    cache = SnapshotCache(any_store, max_entries=2)
    task = await any_store.create_task(prompt="p", budget_usd=1.0)
    first = await cache.get(task.id)
    assert (first.seq, first.status, cache.loads) == (1, "queued", 1)
    assert await cache.get(task.id) is first and cache.loads == 1  # from memory
    await any_store.set_status(task.id, "planning")
    second = await cache.get(task.id)
    assert (second.seq, second.status, cache.loads) == (2, "planning", 2)
    assert json.loads(second.body) == await any_store.snapshot(task.id)
    others = [await any_store.create_task(prompt=f"o{i}", budget_usd=1.0) for i in range(2)]
    for other in others:
        await cache.get(other.id)
    assert len(cache) == 2 and not any_store.hub.watched(task.id)  # evicted, and its listener gone
    with pytest.raises(NotFound):
        await cache.get("t_missing")
    assert not any_store.hub.watched("t_missing")


async def test_a_cache_that_cannot_hear_every_writer_keeps_nothing(store: RunStore) -> None:
    cache = SnapshotCache(store, keep=False)
    task = await store.create_task(prompt="p", budget_usd=1.0)
    assert (await cache.get(task.id)).seq == 1
    with store.engine.begin() as conn:  # another process's write: no event reaches this hub
        conn.exec_driver_sql("UPDATE task SET status='planning', event_seq=2 WHERE id=?", (task.id,))
    again = await cache.get(task.id)
    assert (again.seq, again.status, cache.loads, len(cache)) == (2, "planning", 2, 0)


async def test_polls_are_answered_ahead_of_the_framework_and_errors_by_the_route(api: Api) -> None:
    from compound.api.routes_tasks import FastTaskReads

    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": PLAN}, headers=api.auth(api.alice))
    task_id = r.json()["id"]
    await api.wait(task_id, api.alice)
    layer = api.app.middleware_stack
    while not isinstance(layer, FastTaskReads):
        layer = layer.app  # type: ignore[union-attr]
    behind = layer.app
    reached: list[str] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await behind(scope, receive, send)

    layer.app = recording
    try:
        ok = await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth(api.alice))
        assert ok.status_code == 200 and ok.json()["id"] == task_id and reached == []
        hit = await api.http.get(f"/v1/tasks/{task_id}", headers={**api.auth(api.alice), "If-None-Match": ok.headers["etag"]})
        assert hit.status_code == 304 and reached == []
        # every error is the route's, in the API's shape
        for headers, status in (({}, 401), (api.auth(api.bob), 404), (api.auth("nope"), 401)):
            err = await api.http.get(f"/v1/tasks/{task_id}", headers=headers)
            assert err.status_code == status and "error" in err.json()
        bad = await api.http.get(f"/v1/tasks/{task_id}?wait=99", headers=api.auth(api.alice))
        assert bad.status_code == 422 and "error" in bad.json()
        assert reached == [f"/v1/tasks/{task_id}"] * 4
    finally:
        layer.app = behind
