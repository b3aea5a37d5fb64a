"""The MCP door: tools over compound's tasks, served at /mcp (streamable HTTP, bearer
auth) and over stdio by `compound mcp` (in-process on the local store, or by URL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compound.api.doors.engine import Door, DoorAuthError, bearer_token_of
from compound.api.doors.inputs import BadField, load_json, shown
from compound.api.errors import ApiError
from compound.api.state import app_state
from compound.core.errors import BudgetExceeded, CompoundError, Conflict, NotFound, UserInputError
from compound.store.base import Principal

# A quiet SSE response gets a comment this often (seconds): below the 5 s read timeout
# of httpx's default client, which an MCP client over HTTP often is.
KEEPALIVE_S = 2.0
INVALID_REQUEST, INVALID_PARAMS = -32600, -32602
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
    async def may_read(self) -> None: ...
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

    async def may_read(self) -> None:
        self.door.require(self.principal, "read")

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

    async def may_read(self) -> None:
        """The server knows the token's scopes; what it refuses shows as the task is followed."""

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
        if wait:  # waiting reads the task: a token that cannot is refused before anything is created
            await guarded(tasks.may_read())
        snap = await guarded(tasks.submit(prompt=prompt, budget_usd=budget_usd, priority=priority, plan=plan,
                                          approve=approve))
        if not wait:
            return snap  # type: ignore[no-any-return]
        try:
            return await guarded(follow(ctx, tasks, snap["id"]))  # type: ignore[no-any-return]
        except ToolError as exc:  # the task exists: its caller learns its id whatever went wrong
            raise ToolError(f"{exc} (task {snap['id']} was created and runs on; read it with get_task)") from None

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
            index = int(data["index"])
            finished.add(index)
            if total is None or index >= total:  # a plan grows while it streams, or by replanning
                total = max(len((await tasks.get(task_id))["subtasks"]), index + 1)
            await ctx.report_progress(len(finished), total, f"subtask {data['index']} {data['status']}")
        elif kind == "task":
            if total is not None:  # the plan is whole (or a replanning round added to it)
                total = max(total, len((await tasks.get(task_id))["subtasks"]))
            await ctx.report_progress(len(finished), total, f"task {data.get('status')}")
    return await tasks.get(task_id)


class BearerGate:
    """Refuses /mcp without a live compound token (401 in the MCP SDK's own shape) and
    hands the principal to the tools through the ASGI scope. A POST body that is not a
    JSON-RPC message the SDK can answer (an id that is neither a string nor an integer,
    JSON nested too deep, a number that is not finite, a lone surrogate) is answered here
    with a JSON-RPC error: the SDK would take it for a notification and answer nothing."""

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
            if scope.get("method") == "POST":
                raw, receive = await read_body(receive)
                refusal = rpc_refusal(raw)
                if refusal is not None:
                    await send_json(send, 400, refusal)
                    return
        await self.app(scope, receive, send)


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a receive that gives it again, then what follows."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def rpc_refusal(raw: bytes) -> dict[str, Any] | None:
    """The JSON-RPC error for a body the SDK cannot answer properly; None for the rest
    (not JSON at all: the SDK answers a parse error itself; a number out of bounds: the
    tool says what is wrong with it)."""
    try:
        data = load_json(raw, finite=False)
    except BadField as exc:
        if exc.field == "body":
            return None
        code = INVALID_PARAMS if exc.field.startswith("params") else INVALID_REQUEST
        return rpc_error(None, code, exc.message)
    for message in data if isinstance(data, list) else [data]:
        if isinstance(message, dict) and "id" in message:
            rid = message["id"]
            if isinstance(rid, bool) or not isinstance(rid, str | int):
                return rpc_error(None, INVALID_REQUEST,
                                 f"invalid id: a request's id must be a string or an integer (got {shown(rid)})")
    return None


def rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class KeepAlive:
    """A waiting client is never left in silence: an SSE comment (`: keep-alive`) on a
    response stream quiet for KEEPALIVE_S, so a client waiting on a long tool call
    (submit_task with wait) never hits its read timeout (httpx's default is 5 s). The
    SDK's single-exchange transport (protocol 2026-07-28) holds a silent handler's
    response for 15 s before it commits to a stream; a request whose client accepts
    `text/event-stream` and has had no answer for KEEPALIVE_S is committed here instead
    (as the SDK does after its window): its JSON answer, when it comes, goes out as the
    stream's `message` event. `sent` counts the keep-alives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = b", ".join(v for k, v in scope.get("headers", []) if k.lower() == b"accept")
        may_commit = scope.get("method") == "POST" and b"text/event-stream" in accept
        loop = asyncio.get_running_loop()
        lock = asyncio.Lock()
        started = streaming = committed = ended = False
        as_event = False  # the app answers JSON on a stream committed here: send it as an event
        held: list[bytes] = []
        last = loop.time()

        async def sending(message: Message) -> None:
            nonlocal started, streaming, ended, last, as_event
            async with lock:
                if message["type"] == "http.response.start":
                    sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                              for k, v in message.get("headers", []))
                    started, streaming = True, sse
                    if committed:
                        as_event = not sse
                        return  # the stream's head went out already
                elif message["type"] == "http.response.body":
                    more = bool(message.get("more_body"))
                    ended = not more
                    if as_event:
                        held.append(message.get("body", b""))
                        if more:
                            return
                        data = b"\r\ndata: ".join(b"".join(held).strip().splitlines())
                        message = {"type": "http.response.body", "more_body": False,
                                   "body": b"event: message\r\ndata: " + data + b"\r\n\r\n"}
                await send(message)
                last = loop.time()

        async def beat() -> None:
            nonlocal committed, streaming, last
            while True:
                interval = KEEPALIVE_S
                await asyncio.sleep(max(0.0, last + interval - loop.time()))
                async with lock:
                    if ended:
                        return
                    if loop.time() - last < interval:
                        continue
                    if not started and may_commit and not committed:
                        await send({"type": "http.response.start", "status": 200, "headers": [
                            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
                            (b"x-accel-buffering", b"no")]})
                        committed = streaming = True
                    if streaming:
                        await send({"type": "http.response.body", "body": b": keep-alive\r\n\r\n", "more_body": True})
                        self.sent += 1
                    last = loop.time()

        beating = loop.create_task(beat())
        try:
            await self.app(scope, receive, sending)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)


def _http_tasks(app: FastAPI) -> Callable[[Context], Tasks]:
    def tasks_for(ctx: Context) -> Tasks:
        request = ctx.request_context.request
        principal = getattr(request, "scope", {}).get(PRINCIPAL)
        if not isinstance(principal, Principal):  # BearerGate refuses first; never reached
            raise ToolError("unauthorized: missing bearer token")
        return LocalTasks(Door(app_state(app)), principal)

    return tasks_for


def http_app(app: FastAPI) -> tuple[ASGIApp, MCPServer]:
    """The /mcp endpoint (the bearer gate before the SDK's streamable HTTP handler) and
    its server, whose session manager must run while it serves."""
    server = build_server(_http_tasks(app))
    # Stateless: each POST stands alone (any worker can serve it); bearer auth, not the
    # Host header, is what keeps other sites out.
    server.streamable_http_app(stateless_http=True,
                               transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    return BearerGate(KeepAlive(StreamableHTTPASGIApp(server.session_manager)), lambda: Door(app_state(app))), server
