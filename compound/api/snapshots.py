"""Task snapshots for GET /v1/tasks/{id}: serialized once, versioned by the task's
event sequence (the ETag), and kept in memory until an event says they changed."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from compound.core.secrets import json_redacted
from compound.store.base import RunStore
from compound.store.hub import Subscription
from compound.store.models import TERMINAL_TASK
from compound.store.values import Event


@dataclass(frozen=True, slots=True)
class Snapshot:
    task_id: str
    user_id: str | None
    seq: int
    status: str
    body: bytes

    @property
    def etag(self) -> str:
        return f'"{self.seq}"'

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_TASK


def encode(data: dict[str, Any]) -> bytes:
    """JSON as FastAPI's JSONResponse writes it (compact, UTF-8), every configured secret
    redacted. The data is a snapshot as the store reads it, its money already rounded as
    every view shows it (store/ops_reads.py `versioned_snapshot`)."""
    return json_redacted(data).encode("utf-8")


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison against a list of tags, or `*`."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def version_of(if_none_match: str | None) -> int | None:
    """The event sequence a client holds, from an ETag it was given (None if none is)."""
    for tag in (if_none_match or "").split(","):
        raw = tag.strip().removeprefix("W/").strip('"')
        if raw.isdigit() and len(raw) < 19:
            return int(raw)
    return None


class _Flag(asyncio.Queue[Event]):
    """A queue that keeps no event, only that one came."""

    changed = False

    def put_nowait(self, item: Event) -> None:  # noqa: ARG002 (the hub hands the event in)
        self.changed = True


class _Changed(Subscription):
    """A subscription on the store's hub that only remembers that an event came."""

    def __init__(self, store: RunStore, task_id: str) -> None:
        super().__init__(store, task_id, after=None)
        self.flag = _Flag()
        self.queue = self.flag

    @property
    def changed(self) -> bool:
        return self.flag.changed


@dataclass
class _Entry:
    snapshot: Snapshot
    marker: _Changed


class SnapshotCache:
    """Serialized snapshots by task id, each kept while no event of its task has come
    through the store's hub since it was read (the hub hears this process's commits
    and, on PostgreSQL, other processes' through LISTEN/NOTIFY). The least recently
    read entries go first past `max_entries`. Money settled between two events (a
    call's cost) shows with the next event, as the ETag says: a snapshot is its
    task as of that event."""

    def __init__(self, store: RunStore, *, max_entries: int = 2000, keep: bool = True) -> None:
        # keep=False when some writer's events never reach this hub (tasks run by other
        # processes on SQLite): every read then goes to the store.
        self.store, self.max_entries, self.keep = store, max_entries, keep
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.loads = 0  # store reads made (tests, benchmarks)

    def _drop(self, task_id: str) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is not None:
            self.store.hub.discard(task_id, entry.marker)

    async def _load(self, task_id: str) -> Snapshot:
        self.loads += 1
        head, body = await self.store.versioned_snapshot(task_id)  # one read: the sequence names the body
        return Snapshot(task_id, head.user_id, head.event_seq, str(body["status"]), encode(body))

    async def get(self, task_id: str) -> Snapshot:
        """The task's current snapshot; the store's NotFound when there is none."""
        if not self.keep:
            return await self._load(task_id)
        entry = self._entries.get(task_id)
        if entry is not None:
            if not entry.marker.changed:
                self._entries.move_to_end(task_id)
                return entry.snapshot
            self._drop(task_id)
        marker = _Changed(self.store, task_id)
        self.store.hub.add(task_id, marker)  # before reading: an event in between is seen
        try:
            # The body and its sequence come from one read, so it is exact; an event
            # during the read marks the entry, and the next get reads afresh.
            snap = await self._load(task_id)
        except BaseException:
            self.store.hub.discard(task_id, marker)
            raise
        self._drop(task_id)  # a concurrent read may have stored one meanwhile
        self._entries[task_id] = _Entry(snap, marker)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        return snap

    async def changed(self, task_id: str, *, after: int, timeout: float) -> Snapshot:
        """The snapshot once the task has an event past `after`, or after `timeout`
        seconds: a subscription on its events, no reads while nothing happens."""
        async with self.store.subscribe(task_id, after=after) as sub:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await anext(sub)
        return await self.get(task_id)

    def __len__(self) -> int:
        return len(self._entries)
