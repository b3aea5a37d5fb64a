"""Model calls on a thread and event loop of their own (what `compound serve` uses).

A server under load spends most of its CPU inside the provider SDKs (building requests,
reading and validating answers: docs/benchmarks.md). On the server's event loop that
work delays everything else the loop serves, /healthz and every read included, by
however long a loop iteration's backlog of answers takes. Here the SDK clients live on
a second loop in a daemon thread; the server's loop only awaits a future per call. The
interpreter hands the GIL to a waiting thread within its switch interval, so the HTTP
loop's turn comes within milliseconds however many answers the call loop has queued.

The wrapper is an `LLMClient` like any other: a call's cancellation (a task canceled,
a deadline of the executor's) cancels it on the call loop, its errors are raised as
they are, and `stream()` hands each event over as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

from compound.llm.base import Completion, LLMClient, Message, StreamEvent

T = TypeVar("T")

# The interpreter's default is 5 ms; the HTTP loop waits up to this for the GIL each time
# it wakes while the call loop computes.
SWITCH_INTERVAL_S = 0.001


class _End:
    """The stream's end, or the error it raised, handed from the call loop."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class CallLoopClient:
    """Runs every call of `inner` on its own event loop thread."""

    def __init__(self, inner: LLMClient, *, name: str = "compound-calls") -> None:
        self.inner = inner
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the call loop; cancelling the await cancels it there."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        return await self._on_loop(_awaited(self.inner.complete(
            model=model, messages=messages, max_tokens=max_tokens, json_schema=json_schema, timeout_s=timeout_s)))

    async def stream(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        here = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent | _End] = asyncio.Queue()

        def hand(item: StreamEvent | _End) -> None:
            with contextlib.suppress(RuntimeError):  # this loop has closed: nobody is reading
                here.call_soon_threadsafe(events.put_nowait, item)

        async def pump() -> None:
            try:
                async for event in self.inner.stream(model=model, messages=messages, max_tokens=max_tokens,
                                                     json_schema=json_schema, timeout_s=timeout_s):
                    hand(event)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed over, raised by the reader
                hand(_End(exc))
            else:
                hand(_End())

        pumping = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = await events.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            pumping.cancel()  # the reader stopped early (or was canceled): the call stops too

    async def warm(self) -> None:
        warm = getattr(self.inner, "warm", None)
        if warm is not None:
            await self._on_loop(_awaited(warm()))

    async def aclose(self) -> None:
        """Close the SDK clients on their loop, then stop the thread."""
        aclose = getattr(self.inner, "aclose", None)
        try:
            if aclose is not None and self._thread.is_alive():
                await self._on_loop(_awaited(aclose()))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            if not self._thread.is_alive():
                self._loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is with `compound`'s dependencies), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a bare install
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
