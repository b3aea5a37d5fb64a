"""Eager dispatch over a DAG, and the process-wide limiter of calls in flight.

`run_dag` starts a subtask the moment all of its dependencies completed (no wave
barrier) and, when one ends without a result, skips its transitive dependents with
a reason naming the root cause. It knows nothing of models or the store."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from compound.planner.plan import dependents

COMPLETED = "completed"
PENDING = "pending"


class PriorityLimiter:
    """A semaphore whose waiters are served by priority (0 first), then FIFO."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def in_use(self) -> int:
        return -self._free if self._free < 0 else 0

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

    @asynccontextmanager
    async def slot(self, priority: int = 2) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


# run_one(index) -> None when the subtask completed, else a short reason
# ("failed", "was skipped (budget exhausted)") used in its dependents' skip message.
RunOne = Callable[[int], Awaitable[str | None]]
Skip = Callable[[int, str], None]


async def run_dag(deps: Sequence[Sequence[int]], statuses: Sequence[str], run_one: RunOne,
                  skip: Skip) -> None:
    """Run every PENDING subtask once its dependencies are COMPLETED. `statuses` is the
    starting state (a resumed task has some completed); a dependency that is neither
    completed nor pending makes its dependents skipped at once."""
    children = dependents(deps)
    state = list(statuses)
    waiting = [sum(1 for d in set(ds) if state[d] != COMPLETED) for ds in deps]
    running: dict[int, asyncio.Task[None]] = {}
    finished: asyncio.Queue[tuple[int, str | None, BaseException | None]] = asyncio.Queue()

    async def one(i: int) -> None:
        try:
            finished.put_nowait((i, await run_one(i), None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by the loop below
            finished.put_nowait((i, None, exc))

    def skip_down(root: int, reason: str) -> None:
        # reason: "failed", or "was skipped (budget exhausted)"; the root cause is what
        # the grandchildren quote: "budget exhausted", or "dependency 1 failed".
        cause = reason[reason.index("(") + 1 : reason.rindex(")")] if "(" in reason else (
            f"dependency {root} {reason}")
        stack = [(c, f"dependency {root} {reason}") for c in children[root]]
        while stack:
            i, why = stack.pop()
            if state[i] != PENDING:
                continue
            state[i] = "skipped"
            skip(i, f"skipped: {why}")
            stack.extend((c, f"dependency {i} was skipped ({cause})") for c in children[i])

    def launch(i: int) -> None:
        state[i] = "running"
        running[i] = asyncio.ensure_future(one(i))

    for i, s in enumerate(state):
        if s not in (PENDING, COMPLETED):
            skip_down(i, _reason_for(s))
    for i, s in enumerate(state):
        if s == PENDING and waiting[i] == 0:
            launch(i)
    try:
        while running:
            i, reason, error = await finished.get()
            running.pop(i, None)
            if error is not None:
                raise error
            if reason is None:
                state[i] = COMPLETED
                for c in children[i]:
                    waiting[c] -= 1
                    if waiting[c] == 0 and state[c] == PENDING:
                        launch(c)
            else:
                state[i] = "ended"
                skip_down(i, reason)
    finally:
        for fut in running.values():
            fut.cancel()
        if running:
            await asyncio.gather(*running.values(), return_exceptions=True)


def _reason_for(status: str) -> str:
    return {"failed": "failed", "canceled": "was canceled"}.get(status, "was skipped (earlier)")
