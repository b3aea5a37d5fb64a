"""The MCP door: tools over compound's tasks, served at /mcp (streamable HTTP, bearer
auth) and over stdio by `compound mcp` (in-process on the local store, or by URL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compound.api.doors.engine import Door, DoorAuthError
from compound.api.doors.mcp_gate import PRINCIPAL, BearerGate
from compound.api.doors.mcp_tasks import LocalTasks as LocalTasks  # re-exported
from compound.api.doors.mcp_tasks import RemoteTasks as RemoteTasks  # re-exported
from compound.api.doors.mcp_tasks import Tasks
from compound.api.errors import ApiError
from compound.api.state import app_state
from compound.core.errors import BudgetExceeded, CompoundError, Conflict, NotFound, UserInputError
from compound.store.values import Principal

# A quiet SSE response gets a comment this often (seconds): below the 5 s read timeout
# of httpx's default client, which an MCP client over HTTP often is.
KEEPALIVE_S = 2.0
INSTRUCTIONS = """compound plans a natural-language request as a DAG of subtasks on cheap to strong
models, runs it under a hard budget (USD) and synthesizes one answer. submit_task starts a
task (wait=true waits for the answer, with progress notifications); get_task reads it;
approve_tool_call and deny_tool_call decide the tool calls a task holds for approval."""

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


def build_server(tasks_for: Callable[[Context], Tasks]) -> MCPServer:
    """The MCP server and its tools; `tasks_for(ctx)` gives the caller's Tasks."""
    # WARNING: the SDK calls logging.basicConfig with this level (INFO would chatter on stderr)
    server: MCPServer = MCPServer(name="compound", instructions=INSTRUCTIONS, version="0.1.0", log_level="WARNING")
    _add_task_tools(server, tasks_for)
    _add_call_tools(server, tasks_for)
    _add_plan_tools(server, tasks_for)
    return server


async def guarded(call: Any) -> Any:
    """The call's result; compound's errors become tool errors (tool_error)."""
    try:
        return await call
    except ToolError:
        raise
    except (DoorAuthError, ApiError, CompoundError) as exc:
        raise tool_error(exc) from None


def _add_task_tools(server: MCPServer, tasks_for: Callable[[Context], Tasks]) -> None:
    """submit_task, get_task, list_tasks, cancel_task and approve_task."""

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


def _add_call_tools(server: MCPServer, tasks_for: Callable[[Context], Tasks]) -> None:
    """approve_tool_call and deny_tool_call: decisions on tool calls held for approval
    (a task's snapshot shows them: status `awaiting_approval`, with their ids)."""

    @server.tool()
    async def approve_tool_call(ctx: Context, task_id: str, call_id: str,
                                arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a tool call held for approval, once: with `arguments` when given (edited),
        else with the model's. Returns the call as decided."""
        return await guarded(tasks_for(ctx).decide(  # type: ignore[no-any-return]
            task_id, call_id, approve=True, arguments=arguments, message=None))

    @server.tool()
    async def deny_tool_call(ctx: Context, task_id: str, call_id: str, message: str | None = None) -> dict[str, Any]:
        """Refuse a tool call held for approval: it is never sent, and the model reads the
        refusal (with `message`) as its result. Returns the call as decided."""
        return await guarded(tasks_for(ctx).decide(  # type: ignore[no-any-return]
            task_id, call_id, approve=False, arguments=None, message=message))


def _add_plan_tools(server: MCPServer, tasks_for: Callable[[Context], Tasks]) -> None:
    """validate_plan and estimate_cost: a plan checked and priced before anything runs."""

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
        exchange = _Exchange(self, send, may_commit=may_commit)
        beating = asyncio.get_running_loop().create_task(exchange.beat())
        try:
            await self.app(scope, receive, exchange.sending)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)


class _Exchange:
    """One request's response under KeepAlive: what the app has sent, and the beat
    that fills its silences."""

    def __init__(self, owner: KeepAlive, send: Send, *, may_commit: bool) -> None:
        self.owner, self.send, self.may_commit = owner, send, may_commit
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()
        self.started = self.streaming = self.committed = self.ended = False
        self.as_event = False  # the app answers JSON on a stream committed here: send it as an event
        self.held: list[bytes] = []
        self.last = self.loop.time()

    async def sending(self, message: Message) -> None:
        """The app's send: passed on, except a JSON answer on a stream committed here,
        which goes out whole as the stream's `message` event."""
        async with self.lock:
            if message["type"] == "http.response.start":
                sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                          for k, v in message.get("headers", []))
                self.started, self.streaming = True, sse
                if self.committed:
                    self.as_event = not sse
                    return  # the stream's head went out already
            elif message["type"] == "http.response.body":
                more = bool(message.get("more_body"))
                self.ended = not more
                if self.as_event:
                    self.held.append(message.get("body", b""))
                    if more:
                        return
                    data = b"\r\ndata: ".join(b"".join(self.held).strip().splitlines())
                    message = {"type": "http.response.body", "more_body": False,
                               "body": b"event: message\r\ndata: " + data + b"\r\n\r\n"}
            await self.send(message)
            self.last = self.loop.time()

    async def beat(self) -> None:
        """Until the response ends: after each KEEPALIVE_S of silence, commit to a stream
        when the app has not started and may be, then a keep-alive comment on a stream."""
        while True:
            interval = KEEPALIVE_S
            await asyncio.sleep(max(0.0, self.last + interval - self.loop.time()))
            async with self.lock:
                if self.ended:
                    return
                if self.loop.time() - self.last < interval:
                    continue
                if not self.started and self.may_commit and not self.committed:
                    await self.send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
                        (b"x-accel-buffering", b"no")]})
                    self.committed = self.streaming = True
                if self.streaming:
                    await self.send({"type": "http.response.body", "body": b": keep-alive\r\n\r\n",
                                     "more_body": True})
                    self.owner.sent += 1
                self.last = self.loop.time()


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
