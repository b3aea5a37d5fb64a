"""The Executor on a thread and event loop of its own (what `compound serve` runs).

Under load a server spends its CPU running tasks: the provider SDKs building requests
and reading answers, and the executor's bursts (hundreds of plans landing at once,
each fanning out its calls). On the server's event loop that work would delay every
request it serves, /healthz included, by however long a burst takes. Here the whole
executor, its SDK clients and its store handle live on a second loop in a daemon
thread; the HTTP loop only hands it task ids. The interpreter hands the GIL to a
waiting thread within its switch interval (set to 1 ms here), so the HTTP loop's turn
comes within milliseconds however busy the executor is.

What crosses between the loops:
- dispatch: a task id, handed over without waiting;
- cancel and approve: run on the executor's loop; their errors come back as they are;
- waits: subscriptions on the store's hub, on the caller's loop (the store publishes
  the executor's commits there: store/base.py's EventHub);
- streamed answers: AnswerStreams calls each listener on the loop it listened from.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from compound.core.money import Price
from compound.core.settings import Settings
from compound.executor.answers import AnswerStreams
from compound.executor.hooks import CallObserver
from compound.executor.service import Executor, TaskWaits
from compound.llm.base import LLMClient
from compound.store.base import RunStore
from compound.tools.catalogue import Tools

T = TypeVar("T")

# The interpreter's default is 5 ms; the HTTP loop waits up to this for the GIL each
# time it wakes while the executor's thread computes.
SWITCH_INTERVAL_S = 0.001


class ThreadedExecutor(TaskWaits):
    """An Executor (executor/service.py) running on its own thread: the same methods
    for the routes, awaited from the server's loop."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: RunStore,
        client: LLMClient,
        observers: Sequence[CallObserver] = (),
        stream_answers: bool = False,
        name: str = "compound-executor",
        tools: Tools | None = None,
    ) -> None:
        self.settings = settings
        self.store = store  # the caller's loop's: waits subscribe here
        self.client = client
        self.answers = AnswerStreams()
        self._observers = list(observers)
        self._stream_answers = stream_answers
        self._tools = tools  # the server's ToolServers: a call from this thread's loop is handed to its own
        from compound.llm.pricing import price_of

        self.price_of: Callable[[str], Price] = lambda m: price_of(m, settings)
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._executor: Executor | None = None
        self._store_here: RunStore | None = None

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("the executor has not started: await start() first")
        return self._executor

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the executor's loop; cancelling the await cancels it there."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def start(self) -> list[str]:
        """Start the thread, open the store and the client there, resume unfinished tasks."""
        self._thread.start()
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        return await self._on_loop(self._start())

    async def _start(self) -> list[str]:
        self._store_here = await self.store.sibling()
        warm = getattr(self.client, "warm", None)
        if warm is not None:
            await warm()
        self._executor = Executor(settings=self.settings, store=self._store_here, client=self.client,
                                  price_of=self.price_of, observers=self._observers,
                                  stream_answers=self._stream_answers, answers=self.answers, tools=self._tools)
        return await self._executor.start()

    async def stop(self) -> None:
        """Stop the running tasks (the next start resumes them), close the client and
        the executor's store handle, then the thread."""
        if not self._thread.is_alive():
            return
        try:
            await self._on_loop(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            if not self._thread.is_alive():
                self._loop.close()

    async def _stop(self) -> None:
        try:
            if self._executor is not None:
                await self._executor.stop()
            aclose = getattr(self.client, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._store_here is not None:
                await self.store.close_sibling(self._store_here)

    async def dispatch(self, task_id: str, *, priority: int) -> None:  # noqa: ARG002 (the queue backend uses it)
        """Start a task the API has just stored; returns at once."""
        self._loop.call_soon_threadsafe(self.executor.submit, task_id)

    async def cancel(self, task_id: str) -> None:
        await self._on_loop(self.executor.cancel(task_id))

    async def approve(self, task_id: str) -> None:
        await self._on_loop(self.executor.approve(task_id))

    def is_running(self, task_id: str) -> bool:
        return self.executor.is_running(task_id)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is with `compound`'s dependencies), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a bare install
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


__all__ = ["ThreadedExecutor"]
