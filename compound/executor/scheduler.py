"""Eager dispatch over a DAG, and the process-wide limiter of calls in flight.

`run_dag` starts a subtask the moment all of its dependencies completed (no wave
barrier) and, when one ends without a result, skips its transitive dependents with
a typed cause (Ended) naming the root. A dependency marked optional does not skip its
dependent: that one runs once its other dependencies are done, without the result.
It knows nothing of models or the store."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from compound.planner.plan import dependents

COMPLETED = "completed"
PENDING = "pending"


class PriorityLimiter:
    """A semaphore whose waiters are served by priority (0 first), then FIFO."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int = 2) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot as we were cancelled: give it back
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


class Cause(StrEnum):
    """Why a subtask ended without a result: the root cause its dependents quote."""

    failed = "failed"  # its calls failed
    budget = "budget exhausted"  # its call did not fit what was left of the budget
    canceled = "was canceled"
    earlier = "earlier"  # found skipped when the task resumed (the cause was not kept)
    vetoed = "was vetoed by a hook"  # a pre hook refused to let it run (compound/plugins.py)


@dataclass(frozen=True, slots=True)
class Ended:
    """A subtask's end without a result, as a value carried to its dependents:
    `cause` began at subtask `root`; `skipped` when this one never ran."""

    cause: Cause
    root: int
    skipped: bool

    def why_dependent(self, index: int) -> str:
        """What a dependent of subtask `index` (which ended so) says of it."""
        if not self.skipped:
            return f"dependency {index} {self.cause.value}"
        if self.cause in (Cause.budget, Cause.earlier):
            return f"dependency {index} was skipped ({self.cause.value})"
        return f"dependency {index} was skipped (dependency {self.root} {self.cause.value})"


# run_one(index) -> None when the subtask completed, else how it ended.
RunOne = Callable[[int], Awaitable[Ended | None]]
# skip(index, ended, reason): a dependent will not run; `reason` is its error in words.
Skip = Callable[[int, Ended, str], Awaitable[None]]


async def run_dag(deps: Sequence[Sequence[int]], statuses: Sequence[str], run_one: RunOne,
                  skip: Skip, *, optional: Sequence[Collection[int]] | None = None) -> None:
    """Run every PENDING subtask once its dependencies are COMPLETED. `statuses` is the
    starting state (a resumed task has some completed); a dependency that is neither
    completed nor pending makes its dependents skipped at once. `optional[i]` holds the
    dependencies subtask i can do without: one of them ending without a result counts
    as done for i (and i's run_one finds no result for it)."""
    can_miss = [frozenset(o) for o in optional] if optional is not None else [frozenset()] * len(deps)
    await _DagRun(deps, statuses, run_one, skip, can_miss).run()


class _DagRun:
    """One run of a DAG: each subtask's state, how many dependencies it still waits
    for, and the subtasks running now."""

    def __init__(self, deps: Sequence[Sequence[int]], statuses: Sequence[str], run_one: RunOne,
                 skip: Skip, can_miss: list[frozenset[int]]) -> None:
        self.children = dependents(deps)
        self.can_miss = can_miss
        self.state = list(statuses)
        self.waiting = [sum(1 for d in set(ds) if self.state[d] != COMPLETED) for ds in deps]
        self.run_one, self.skip = run_one, skip
        self.running: dict[int, asyncio.Task[None]] = {}
        self.finished: asyncio.Queue[tuple[int, Ended | None, BaseException | None]] = asyncio.Queue()

    async def run(self) -> None:
        """Skip what depends on a subtask found ended, start what is ready, then follow
        each end until nothing runs; whatever still runs on the way out is cancelled."""
        for i, s in enumerate(self.state):
            if s not in (PENDING, COMPLETED):
                await self.skip_down(i, _ended_for(s, i))
        for i, s in enumerate(self.state):
            if s == PENDING and self.waiting[i] == 0:
                self.launch(i)
        try:
            while self.running:
                i, ended, error = await self.finished.get()
                self.running.pop(i, None)
                if error is not None:
                    raise error
                await self.ended(i, ended)
        finally:
            for fut in self.running.values():
                fut.cancel()
            if self.running:
                await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def ended(self, i: int, ended: Ended | None) -> None:
        """Subtask i ended: completed, its ready dependents start; else they are skipped."""
        if ended is not None:
            self.state[i] = "ended"
            await self.skip_down(i, ended)
            return
        self.state[i] = COMPLETED
        for c in self.children[i]:
            self.waiting[c] -= 1
            if self.waiting[c] == 0 and self.state[c] == PENDING:
                self.launch(c)

    async def one(self, i: int) -> None:
        try:
            self.finished.put_nowait((i, await self.run_one(i), None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by run()
            self.finished.put_nowait((i, None, exc))

    async def skip_down(self, root: int, ended: Ended) -> None:
        """Skip root's transitive dependents, except one that can do without its parent:
        that one counts the parent as done (and starts when nothing else holds it)."""
        stack = [(c, root, ended) for c in self.children[root]]
        while stack:
            i, parent, how = stack.pop()
            if self.state[i] != PENDING:
                continue
            if parent in self.can_miss[i]:
                self.waiting[i] -= 1
                if self.waiting[i] == 0:
                    self.launch(i)
                continue
            self.state[i] = "skipped"
            mine = Ended(how.cause, how.root, skipped=True)
            await self.skip(i, mine, f"skipped: {how.why_dependent(parent)}")
            stack.extend((c, i, mine) for c in self.children[i])

    def launch(self, i: int) -> None:
        self.state[i] = "running"
        self.running[i] = asyncio.ensure_future(self.one(i))


def _ended_for(status: str, index: int) -> Ended:
    """How a subtask found ended when a task resumes ended (its cause is not stored)."""
    if status == "failed":
        return Ended(Cause.failed, index, skipped=False)
    if status == "canceled":
        return Ended(Cause.canceled, index, skipped=False)
    return Ended(Cause.earlier, index, skipped=True)
