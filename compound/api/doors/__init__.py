"""Front doors for other programs, each a thin mapping onto the same tasks, budgets,
auth and store (doors/engine.py): Chat Completions, MCP and A2A."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    from compound.api.doors import a2a, mcp, openai

    app.include_router(openai.router)
    a2a.install(app)
    mcp.install(app)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    """What the doors run while the app serves: the MCP session manager, in a task of
    its own (its task group must be left by the task that entered it, and a lifespan
    may be entered and left by different tasks)."""
    server = getattr(app.state, "mcp_server", None)
    if server is None:
        yield
        return
    started, stop = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with server.session_manager.run():
            started.set()
            await stop.wait()

    holder = asyncio.get_running_loop().create_task(hold())
    waiter = asyncio.get_running_loop().create_task(started.wait())
    await asyncio.wait({holder, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if holder.done():  # it failed to start: say why
        waiter.cancel()
        holder.result()
    try:
        yield
    finally:
        stop.set()
        await holder
