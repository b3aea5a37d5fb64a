"""Front doors for other programs, each a thin mapping onto the same tasks, budgets,
auth and store (doors/engine.py): Chat Completions, MCP and A2A."""

from __future__ import annotations

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
    """What the doors run while the app serves: the MCP session manager."""
    server = getattr(app.state, "mcp_server", None)
    if server is None:
        yield
        return
    async with server.session_manager.run():
        yield
