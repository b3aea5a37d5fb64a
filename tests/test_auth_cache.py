"""Authentication served from memory: a revoked token stops within the cache's TTL
(at most 1 s, driven here by a fake clock), and last uses are written in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from compound.api.auth import TokenCache
from compound.core.errors import ConfigError
from compound.core.settings import load_settings
from compound.store import Store
from compound.store.users import create_token, list_tokens, record_last_used, revoke_token
from tests.fixtures.api import Api


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine runs inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_revoked_token_stops_working_once_its_entry_expires(any_store: Store) -> None:
    clock = FakeClock()
    cache = TokenCache(any_store, ttl_s=1.0, clock=clock)
    row, token = create_token(any_store.engine, "ann")
    assert await cache.lookup(token) is not None
    revoke_token(any_store.engine, row.id)
    clock.now += 0.999  # still inside the window the design allows
    assert await cache.lookup(token) is not None
    clock.now += 0.001  # 1 s after the lookup was cached: read again, and refused
    assert await cache.lookup(token) is None


async def test_hits_read_nothing_and_bad_tokens_are_remembered(store: Store) -> None:
    clock = FakeClock()
    cache = TokenCache(store, ttl_s=1.0, clock=clock)
    _, token = create_token(store.engine, "ann", ["read"])
    reads = store.stats.reads
    for _ in range(50):
        principal = await cache.lookup(token)
        assert principal is not None and principal.scopes == frozenset({"read"})
        assert await cache.lookup("cpd_not-a-token") is None
    assert store.stats.reads - reads == 2  # one lookup each, then memory
    clock.now += 1.0
    await cache.lookup(token)
    assert store.stats.reads - reads == 3


async def test_requests_that_miss_together_share_one_read(store: Store) -> None:
    clock = FakeClock()
    cache = TokenCache(store, ttl_s=1.0, clock=clock)
    _, token = create_token(store.engine, "ann")
    reads = store.stats.reads
    found = await asyncio.gather(*(cache.lookup(token) for _ in range(20)))
    assert all(p is not None and p.user_name == "ann" for p in found)
    assert store.stats.reads - reads == 1 and not cache._reads


async def test_a_busy_token_is_read_again_before_its_entry_expires(store: Store) -> None:
    clock = FakeClock()
    cache = TokenCache(store, ttl_s=1.0, clock=clock)
    row, token = create_token(store.engine, "ann")
    await cache.lookup(token)
    reads = store.stats.reads
    clock.now += 0.4
    await cache.lookup(token)
    assert store.stats.reads == reads and not cache._reads  # young: memory only
    clock.now += 0.2
    assert await cache.lookup(token) is not None  # answered at once, and a read started
    await asyncio.gather(*cache._reads.values())
    assert store.stats.reads == reads + 1
    revoke_token(store.engine, row.id)
    clock.now += 0.9  # 1.5 s after the first read, 0.9 s after the refresh: still the refresh's answer
    assert await cache.lookup(token) is not None
    await asyncio.gather(*cache._reads.values())  # the refresh that started now sees the revocation
    assert await cache.lookup(token) is None


async def test_the_cache_stays_bounded(store: Store) -> None:
    cache = TokenCache(store, ttl_s=1.0, clock=FakeClock(), max_entries=10)
    for i in range(100):
        await cache.lookup(f"cpd_bad{i}")
    assert len(cache._entries) <= 10


async def test_last_use_is_written_in_one_batch_on_flush(any_store: Store) -> None:
    engine = any_store.engine
    cache = TokenCache(any_store, clock=FakeClock())
    (ann, a), (bea, b), (cid, _) = (create_token(engine, n) for n in ("ann", "bea", "cid"))
    writes = any_store.stats.writes
    with statements(engine) as seen:
        for _ in range(20):
            await cache.lookup(a)
            await cache.lookup(b)
    assert not [s for s in seen if s.lstrip().upper().startswith("UPDATE")]  # no write per request
    assert any_store.stats.writes == writes
    assert set(cache.pending()) == {ann.id, bea.id}
    with statements(engine) as seen:
        await cache.flush()
    assert len([s for s in seen if s.lstrip().upper().startswith("UPDATE")]) == 1
    assert cache.pending() == {}
    used = {row.id: row.last_used_at for row, _ in list_tokens(engine)}
    assert used[ann.id] is not None and used[bea.id] is not None and used[cid.id] is None


def test_a_later_use_stored_by_another_process_is_kept(engine: Engine) -> None:
    row, _ = create_token(engine, "ann")
    later = datetime(2030, 1, 1, tzinfo=UTC)
    record_last_used(engine, {row.id: later})
    record_last_used(engine, {row.id: later - timedelta(hours=1)})
    stored = next(r.last_used_at for r, _ in list_tokens(engine) if r.id == row.id)
    assert stored is not None and stored.replace(tzinfo=UTC) == later


async def test_tokens_list_shows_last_use_after_a_flush(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from compound.cli import _register, app

    assert (await api.http.get("/v1/tasks", headers=api.auth(api.alice))).status_code == 200
    await api.app.state.tokens.flush()
    _register()
    monkeypatch.setenv("COMPOUND_DATABASE_URL", api.app.state.settings.database_url)
    out = CliRunner().invoke(app, ["tokens", "list"], env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    lines = {line.split("│")[2].strip(): line for line in out.stdout.splitlines() if line.count("│") > 5}
    today = datetime.now(UTC).date().isoformat()
    assert lines["alice"].split("│")[5].strip().startswith(today[:4])  # last used: a date
    assert lines["bob"].split("│")[5].strip() == ""  # never used


@pytest.mark.parametrize("value", ["1.5", "-1"])
def test_the_cache_window_cannot_exceed_one_second(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_TOKEN_CACHE_S", value)
    with pytest.raises(ConfigError, match="token_cache_s"):
        load_settings()
