"""The MCP door: tools over compound's tasks, served at /mcp (streamable HTTP, bearer
auth) and over stdio by `compound mcp` (in-process on the local store, or by URL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from compound.api.doors.engine import Door, DoorAuthError, bearer_token_of
from compound.api.errors import ApiError
from compound.core.errors import BudgetExceeded, CompoundError, Conflict, NotFound, UserInputError
from compound.store.base import Principal

PATH = "/mcp"
PRINCIPAL = "compound.principal"
INSTRUCTIONS = """compound plans a natural-language request as a DAG of subtasks on cheap to strong
models, runs it under a hard budget (USD) and synthesizes one answer. submit_task starts a
task (wait=true waits for the answer, with progress notifications); get_task reads it."""

# compound's errors as a tool error's leading code; the first match wins
ERROR_CODES: list[tuple[type[Exception], str]] = [
    (BudgetExceeded, "budget_too_small"),
    (UserInputError, "invalid_request"),
    (NotFound, "not_found"),
    (Conflict, "conflict"),
]


def tool_error(exc: Exception) -> ToolError:
    if isinstance(exc, DoorAuthError):
        return ToolError(f"{'unauthorized' if exc.status == 401 else 'forbidden'}: {exc.message}")
    if isinstance(exc, ApiError):
        return ToolError(f"{exc.code}: {exc.message}")
    code = next((c for cls, c in ERROR_CODES if isinstance(exc, cls)), "error")
    return ToolError(f"{code}: {getattr(exc, 'message', str(exc))}")


class Tasks(Protocol):
    """What the tools need: the engine door in-process, or a server over HTTP."""

    async def submit(self, *, prompt: str, budget_usd: float | None, priority: int | None,
                     plan: dict[str, Any] | None, approve: bool) -> dict[str, Any]: ...
    async def get(self, task_id: str) -> dict[str, Any]: ...
    async def list(self, *, limit: int, status: str | None, cursor: str | None) -> dict[str, Any]: ...
    async def cancel(self, task_id: str) -> dict[str, Any]: ...
    async def approve(self, task_id: str) -> dict[str, Any]: ...
    async def validate(self, plan: dict[str, Any]) -> dict[str, Any]: ...
    def events(self, task_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...


class LocalTasks:
    """The tools on the engine door, as one principal."""

    def __init__(self, door: Door, principal: Principal) -> None:
        self.door, self.principal = door, principal

    async def submit(self, *, prompt: str, budget_usd: float | None, priority: int | None,
                     plan: dict[str, Any] | None, approve: bool) -> dict[str, Any]:
        return await self.door.submit(self.principal, prompt=prompt, budget_usd=budget_usd, priority=priority,
                                      plan=plan, approve=approve)

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self.door.snapshot(self.principal, task_id)

    async def list(self, *, limit: int, status: str | None, cursor: str | None) -> dict[str, Any]:
        tasks, next_cursor = await self.door.recent(self.principal, limit=limit, status=status, cursor=cursor)
        return {"tasks": tasks, "next_cursor": next_cursor}

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self.door.cancel(self.principal, task_id)

    async def approve(self, task_id: str) -> dict[str, Any]:
        return await self.door.approve(self.principal, task_id)

    async def validate(self, plan: dict[str, Any]) -> dict[str, Any]:
        self.door.require(self.principal, "read")
        return self.door.validate(plan)

    async def events(self, task_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        async for ev in self.door.events(task_id):
            yield ev.kind, ev.data


class RemoteTasks:
    """The tools on a running server's REST routes (`compound mcp --url`)."""

    def __init__(self, url: str, token: str, *, transport: Any = None) -> None:
        import httpx

        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"},
                                      timeout=httpx.Timeout(30, read=None), transport=transport)

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        import httpx

        try:
            r = await self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ToolError(f"unreachable: cannot reach {self.http.base_url}: {type(exc).__name__}") from None
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ToolError(f"{err['code']}: {err['message']}")
            except (ValueError, KeyError, TypeError):
                raise ToolError(f"error: HTTP {r.status_code}") from None
        return r.json()  # type: ignore[no-any-return]

    async def submit(self, *, prompt: str, budget_usd: float | None, priority: int | None,
                     plan: dict[str, Any] | None, approve: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt, "approve": approve}
        for key, value in (("budget_usd", budget_usd), ("priority", priority), ("plan", plan)):
            if value is not None:
                body[key] = value
        return await self._call("POST", "/v1/tasks", json=body)

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/tasks/{task_id}")

    async def list(self, *, limit: int, status: str | None, cursor: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return await self._call("GET", "/v1/tasks", params=params)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/tasks/{task_id}/cancel")

    async def approve(self, task_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/tasks/{task_id}/approve")

    async def validate(self, plan: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/v1/plans/validate", json={"plan": plan})

    async def events(self, task_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The server's SSE stream of the task's events."""
        async with self.http.stream("GET", f"/v1/tasks/{task_id}/events") as r:
            if r.status_code >= 400:
                await r.aread()
                raise ToolError(f"error: HTTP {r.status_code} reading the task's events")
            kind = "message"
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    yield kind, json.loads(line[5:].strip())

    async def aclose(self) -> None:
        await self.http.aclose()


def build_server(tasks_for: Callable[[Context], Tasks]) -> MCPServer:
    """The MCP server and its tools; `tasks_for(ctx)` gives the caller's Tasks."""
    # WARNING: the SDK calls logging.basicConfig with this level (INFO would chatter on stderr)
    server: MCPServer = MCPServer(name="compound", instructions=INSTRUCTIONS, version="0.1.0", log_level="WARNING")

    async def guarded(call: Any) -> Any:
        try:
            return await call
        except ToolError:
            raise
        except (DoorAuthError, ApiError, CompoundError) as exc:
            raise tool_error(exc) from None

    @server.tool()
    async def submit_task(ctx: Context, prompt: str, budget_usd: float | None = None, priority: int | None = None,
                          plan: dict[str, Any] | None = None, approve: bool = True,
                          wait: bool = False) -> dict[str, Any]:
        """Submit a request. budget_usd caps its cost (default: the server's); priority 0 (most urgent)
        to 3; plan runs your own plan instead of planning; approve=false stops at `planned`.
        wait=true returns the finished task (with its answer in `result`), sending progress
        notifications (finished subtasks of all) while it runs."""
        tasks = tasks_for(ctx)
        snap = await guarded(tasks.submit(prompt=prompt, budget_usd=budget_usd, priority=priority, plan=plan,
                                          approve=approve))
        if not wait:
            return snap  # type: ignore[no-any-return]
        return await follow(ctx, tasks, snap["id"])

    @server.tool()
    async def get_task(ctx: Context, task_id: str) -> dict[str, Any]:
        """A task's status, plan, subtasks, result, error and cost."""
        return await guarded(tasks_for(ctx).get(task_id))  # type: ignore[no-any-return]

    @server.tool()
    async def list_tasks(ctx: Context, limit: int = 20, status: str | None = None,
                         cursor: str | None = None) -> dict[str, Any]:
        """Your recent tasks, newest first (next_cursor pages on)."""
        return await guarded(tasks_for(ctx).list(limit=limit, status=status, cursor=cursor))  # type: ignore[no-any-return]

    @server.tool()
    async def cancel_task(ctx: Context, task_id: str) -> dict[str, Any]:
        """Stop a running task: in-flight calls are canceled, the rest skipped."""
        return await guarded(tasks_for(ctx).cancel(task_id))  # type: ignore[no-any-return]

    @server.tool()
    async def approve_task(ctx: Context, task_id: str) -> dict[str, Any]:
        """Start a task submitted with approve=false once it is `planned`."""
        return await guarded(tasks_for(ctx).approve(task_id))  # type: ignore[no-any-return]

    @server.tool()
    async def validate_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
        """Check a plan ({"reasoning", "subtasks": [{"description", "tier_hint", "depends_on"}]}):
        every error, its waves, critical path and worst-case cost."""
        return await guarded(tasks_for(ctx).validate(plan))  # type: ignore[no-any-return]

    @server.tool()
    async def estimate_cost(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
        """The most a plan can cost (USD, every call at its worst case), before anything runs."""
        out = await guarded(tasks_for(ctx).validate(plan))
        return {"valid": out["valid"], "errors": out["errors"], "estimated_cost_usd": out["estimated_cost_usd"]}

    return server


async def follow(ctx: Context, tasks: Tasks, task_id: str) -> dict[str, Any]:
    """Wait for the task's end, reporting progress (finished subtasks of all)."""
    finished: set[int] = set()
    total: int | None = None
    async for kind, data in tasks.events(task_id):
        if kind == "subtask" and data.get("status") in ("completed", "failed", "skipped", "canceled"):
            finished.add(int(data["index"]))
            if total is None:
                total = len((await tasks.get(task_id))["subtasks"]) or None
            await ctx.report_progress(len(finished), total, f"subtask {data['index']} {data['status']}")
        elif kind == "task":
            await ctx.report_progress(len(finished), total, f"task {data.get('status')}")
    return await tasks.get(task_id)


class BearerGate:
    """Refuses /mcp without a live compound token (401 in the MCP SDK's own shape) and
    hands the principal to the tools through the ASGI scope."""

    def __init__(self, app: ASGIApp, door: Callable[[], Door]) -> None:
        self.app, self.door = app, door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            try:
                scope[PRINCIPAL] = await self.door().authenticate(bearer_token_of(headers.get("authorization")))
            except DoorAuthError as exc:
                body = json.dumps({"error": "invalid_token", "error_description": exc.message}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'Bearer error="invalid_token", error_description="{exc.message}"'
                     .encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _http_tasks(app: FastAPI) -> Callable[[Context], Tasks]:
    def tasks_for(ctx: Context) -> Tasks:
        request = ctx.request_context.request
        principal = getattr(request, "scope", {}).get(PRINCIPAL)
        if not isinstance(principal, Principal):  # BearerGate refuses first; never reached
            raise ToolError("unauthorized: missing bearer token")
        return LocalTasks(Door(app.state), principal)

    return tasks_for


def http_app(app: FastAPI) -> tuple[ASGIApp, MCPServer]:
    """The /mcp endpoint (the bearer gate before the SDK's streamable HTTP handler) and
    its server, whose session manager must run while it serves."""
    server = build_server(_http_tasks(app))
    # Stateless: each POST stands alone (any worker can serve it); bearer auth, not the
    # Host header, is what keeps other sites out.
    server.streamable_http_app(stateless_http=True,
                               transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    return BearerGate(StreamableHTTPASGIApp(server.session_manager), lambda: Door(app.state)), server
