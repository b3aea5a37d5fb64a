"""Front doors for other programs, each a thin mapping onto the same tasks, budgets,
auth and store (doors/engine.py): Chat Completions, MCP and A2A. The MCP and A2A SDKs
are imported on a door's first request, so the server starts as fast as without them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

router = APIRouter(tags=["a2a"])


@router.get("/.well-known/agent-card.json", summary="The A2A agent card (public; it declares the bearer auth "
            "/a2a needs)")
async def agent_card(request: Request) -> Response:
    from compound.api.doors import a2a

    return await a2a.card(request)


@router.post("/a2a", summary="A2A JSON-RPC: SendMessage, SendStreamingMessage, GetTask, CancelTask, ListTasks, "
             "SubscribeToTask (and the 0.3 names message/send, message/stream, tasks/get, tasks/cancel)")
async def a2a_rpc(request: Request) -> Response:
    from compound.api.doors import a2a

    return await a2a.rpc(request)


class McpEndpoint:
    """/mcp: builds the MCP server and starts its session manager (in a task of its own:
    an anyio task group must be left by the task that entered it) on first use."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.handler: Any = None
        self.holder: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.handler is None:
            async with self.lock:
                if self.handler is None:
                    await self._start()
        await self.handler(scope, receive, send)

    async def _start(self) -> None:
        from compound.api.doors.mcp import http_app

        handler, server = http_app(self.app)
        started = asyncio.Event()

        async def hold() -> None:
            async with server.session_manager.run():
                started.set()
                await self.stop.wait()

        self.holder = asyncio.get_running_loop().create_task(hold())
        waiter = asyncio.get_running_loop().create_task(started.wait())
        await asyncio.wait({self.holder, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if self.holder.done():  # it could not start: say why
            waiter.cancel()
            self.holder.result()
        self.handler = handler

    async def close(self) -> None:
        if self.holder is not None:
            self.stop.set()
            await self.holder


def install(app: FastAPI) -> None:
    from compound.api.doors import openai

    app.include_router(openai.router)
    app.add_middleware(openai.OpenAIErrors)  # outermost: it sees the body limit's 413 too
    app.include_router(router)
    endpoint = McpEndpoint(app)
    app.state.mcp_endpoint = endpoint
    app.router.routes.append(Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"]))


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    """While the app serves; on the way out, stop the MCP session manager if it started."""
    try:
        yield
    finally:
        endpoint = getattr(app.state, "mcp_endpoint", None)
        if endpoint is not None:
            await endpoint.close()
