"""Queue mode's snapshots: a queued task's snapshot carries a `notice` while no
`compound worker` is alive to take it (worker/liveness.py). The notice is read per
full read (at most one database read per WorkerWatch interval) and never cached with
the snapshot: a worker's start or death is no event of the task."""

from __future__ import annotations

import json

from compound.api.snapshots import Snapshot, SnapshotCache, encode
from compound.store.base import RunStore
from compound.worker.liveness import WorkerWatch


class NoticedSnapshots(SnapshotCache):
    def __init__(self, store: RunStore, *, watch: WorkerWatch, keep: bool = True) -> None:
        super().__init__(store, keep=keep)
        self.watch = watch

    async def get(self, task_id: str) -> Snapshot:
        snap = await super().get(task_id)
        if snap.status != "queued":
            return snap
        notice = await self.watch.notice()
        if notice is None:
            return snap
        data = json.loads(snap.body)
        data["notice"] = notice
        return Snapshot(snap.task_id, snap.user_id, snap.seq, snap.status, encode(data))
