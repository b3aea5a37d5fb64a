"""Task snapshots for GET /v1/tasks/{id}: serialized once, versioned by the task's
event sequence (the ETag), and kept in memory until an event says they changed."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from compound.store.models import TERMINAL_TASK


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
    """JSON as FastAPI's JSONResponse writes it (compact, UTF-8)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


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


class _Changed(asyncio.Queue[Any]):
    """A subscriber that only remembers that an event came (holds nothing)."""

    changed = False

    def put_nowait(self, item: Any) -> None:  # noqa: ARG002 (the hub hands the event in)
        self.changed = True


class Hub(Protocol):
    """What the cache needs of the store's event hub (store/base.py EventHub)."""

    def add(self, task_id: str, queue: asyncio.Queue[Any]) -> None: ...
    def discard(self, task_id: str, queue: asyncio.Queue[Any]) -> None: ...


@dataclass
class _Entry:
    snapshot: Snapshot
    marker: _Changed | None  # None: the task ended, the snapshot is final


class SnapshotCache:
    """Serialized snapshots by task id. A finished task's snapshot is final; a running
    task's is kept only while a subscription on the store's event hub has seen no
    event for it (the hub hears this process's commits and, on PostgreSQL, other
    processes' through LISTEN/NOTIFY). Without a hub only finished tasks are kept.
    Least recently used entries go first past `max_entries`."""

    def __init__(self, load: Callable[[str], Awaitable[Snapshot]], *, hub: Hub | None = None,
                 max_entries: int = 2000) -> None:
        self.load, self.hub, self.max_entries = load, hub, max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.loads = 0  # store reads made (tests, benchmarks)

    def _drop(self, task_id: str) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is not None and entry.marker is not None and self.hub is not None:
            self.hub.discard(task_id, entry.marker)

    async def get(self, task_id: str) -> Snapshot:
        """The task's current snapshot; the store's NotFound when there is none."""
        entry = self._entries.get(task_id)
        if entry is not None:
            if entry.marker is None or not entry.marker.changed:
                self._entries.move_to_end(task_id)
                return entry.snapshot
            self._drop(task_id)
        marker = None
        if self.hub is not None:  # listen before reading: an event in between is not missed
            marker = _Changed()
            self.hub.add(task_id, marker)
        try:
            self.loads += 1
            snap = await self.load(task_id)
        except BaseException:
            if marker is not None and self.hub is not None:
                self.hub.discard(task_id, marker)
            raise
        if snap.terminal and marker is not None and self.hub is not None:
            self.hub.discard(task_id, marker)
            marker = None
        if marker is None and not snap.terminal:
            return snap  # nothing would tell us it changed: not kept
        self._drop(task_id)
        self._entries[task_id] = _Entry(snap, marker)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        return snap

    def __len__(self) -> int:
        return len(self._entries)


def consistent(read_seq: Callable[[], int], read_body: Callable[[], dict[str, Any]],
               *, tries: int = 3) -> tuple[int, dict[str, Any], bool]:
    """(seq, body, settled): the body read between two reads of the sequence that
    agree, so the ETag names exactly this body. When the task keeps changing, the
    first sequence is returned with settled False (an older ETag than the body is
    safe: the client just reads again)."""
    first = read_seq()
    seq = first
    for _ in range(tries):
        body = read_body()
        after = read_seq()
        if after == seq:
            return seq, body, True
        seq = after
    return first, body, False


def engine_loader(engine: Any) -> Callable[[str], Awaitable[Snapshot]]:
    """Snapshots read with the synchronous engine, off the event loop."""
    from compound.store.tasks import get_task, task_snapshot

    def read(task_id: str) -> Snapshot:
        owner: list[str | None] = []

        def seq() -> int:
            task = get_task(engine, task_id)
            owner.append(task.user_id)
            return task.event_seq

        at, body, _ = consistent(seq, lambda: task_snapshot(engine, task_id))
        return Snapshot(task_id, owner[0], at, str(body["status"]), encode(body))

    async def load(task_id: str) -> Snapshot:
        return await asyncio.to_thread(read, task_id)

    return load
