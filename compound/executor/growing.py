"""Eager dispatch over a DAG that grows while it runs (a plan still streaming).

Subtasks are `add`ed in index order, each with its dependencies; one starts the
moment every dependency completed, also a dependency added after it (a forward
reference waits for it). When one ends without a result its dependents are skipped
with a typed cause (scheduler.Ended), as `run_dag` does. After `close()` no subtask
comes: one still waiting on a dependency that never came, or on a cycle, is skipped.
A subtask not yet started may be held (`hold`), then given new dependencies
(`replace`) or let go as it was (`release`): the whole plan may change what has not run."""

from __future__ import annotations

import asyncio
from typing import Literal

from compound.executor.scheduler import COMPLETED, PENDING, Cause, Ended, RunOne, Skip

HELD = "held"
_Item = (tuple[Literal["add", "replace"], int, list[int]] | tuple[Literal["release"], int]
         | tuple[Literal["close"]] | tuple[Literal["done"], int, Ended | None, BaseException | None])


class GrowingDag:
    def __init__(self, run_one: RunOne, skip: Skip) -> None:
        self._run_one = run_one
        self._skip = skip
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self.state: dict[int, str] = {}
        self._deps: dict[int, list[int]] = {}
        self._children: dict[int, list[int]] = {}
        self._ended: dict[int, Ended] = {}
        self._running: dict[int, asyncio.Task[None]] = {}

    def add(self, index: int, deps: list[int]) -> None:
        self._inbox.put_nowait(("add", index, list(dict.fromkeys(deps))))

    def close(self) -> None:
        self._inbox.put_nowait(("close",))

    def hold(self, index: int) -> bool:
        """Keep a subtask from starting (also one added but not yet arrived here): True,
        or False when it has started already. Takes effect at once."""
        if self.state.get(index) in (None, PENDING, HELD):
            self.state[index] = HELD
            return True
        return False

    def replace(self, index: int, deps: list[int]) -> None:
        """A held subtask's new dependencies; it may start again."""
        self._inbox.put_nowait(("replace", index, list(dict.fromkeys(deps))))

    def release(self, index: int) -> None:
        """A held subtask may start again, unchanged."""
        self._inbox.put_nowait(("release", index))

    async def run(self) -> None:
        closed = False
        try:
            while not closed or self._running:
                item = await self._inbox.get()
                if item[0] == "add":
                    await self._arrive(item[1], item[2])
                elif item[0] == "replace":
                    for d in self._deps.get(item[1], []):
                        self._children[d].remove(item[1])
                    await self._arrive(item[1], item[2], unhold=True)
                elif item[0] == "release":
                    await self._arrive(item[1], self._deps[item[1]], unhold=True, known=True)
                elif item[0] == "close":
                    closed = True
                else:
                    _, i, ended, error = item
                    self._running.pop(i, None)
                    if error is not None:
                        raise error
                    await self._finish(i, ended)
                if closed and not self._running:
                    await self._strand()
        finally:
            for fut in self._running.values():
                fut.cancel()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _one(self, i: int) -> None:
        try:
            self._inbox.put_nowait(("done", i, await self._run_one(i), None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by run()
            self._inbox.put_nowait(("done", i, None, exc))

    def _launch(self, i: int) -> None:
        self.state[i] = "running"
        self._running[i] = asyncio.ensure_future(self._one(i))

    def _ready(self, i: int) -> bool:
        return self.state.get(i) == PENDING and all(self.state.get(d) == COMPLETED for d in self._deps[i])

    async def _arrive(self, i: int, deps: list[int], *, unhold: bool = False, known: bool = False) -> None:
        if self.state.get(i) == HELD and not unhold:
            self._deps[i] = deps  # held before it came: it waits for replace or release
            for d in deps:
                self._children.setdefault(d, []).append(i)
            return
        self.state[i] = PENDING
        if not known:
            self._deps[i] = deps
            for d in deps:
                self._children.setdefault(d, []).append(i)
        gone = next((d for d in deps if d in self._ended), None)
        if gone is not None:
            await self._skip_one(i, gone, self._ended[gone])
        elif self._ready(i):
            self._launch(i)

    async def _finish(self, i: int, ended: Ended | None) -> None:
        if ended is None:
            self.state[i] = COMPLETED
            for c in self._children.get(i, []):
                if self._ready(c):
                    self._launch(c)
            return
        self.state[i] = "ended"
        self._ended[i] = ended
        for c in list(self._children.get(i, [])):
            await self._skip_one(c, i, ended)

    async def _skip_one(self, i: int, parent: int, how: Ended) -> None:
        """Skip `i` (a dependent of `parent`, which ended so) and its dependents known so far."""
        stack = [(i, parent, how)]
        while stack:
            j, par, h = stack.pop()
            if self.state.get(j) != PENDING:
                continue
            self.state[j] = "skipped"
            mine = Ended(h.cause, h.root, skipped=True)
            self._ended[j] = mine
            await self._skip(j, mine, f"skipped: {h.why_dependent(par)}")
            stack.extend((c, j, mine) for c in self._children.get(j, []))

    async def _strand(self) -> None:
        """Nothing runs and nothing comes: what still waits can never start."""
        for i in sorted(i for i, s in self.state.items() if s in (PENDING, HELD)):
            if self.state[i] not in (PENDING, HELD):
                continue
            missing = [d for d in self._deps[i] if d not in self.state]
            why = (f"skipped: dependency {missing[0]} is not in the plan" if missing
                   else "skipped: its dependencies wait on each other (a cycle)")
            self.state[i] = "skipped"
            how = Ended(Cause.failed, missing[0] if missing else i, skipped=True)
            self._ended[i] = how
            await self._skip(i, how, why)
            for c in self._children.get(i, []):
                await self._skip_one(c, i, how)
