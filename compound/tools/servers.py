"""The configured MCP servers: one long-lived session per server per process, each
opened, used and closed by one task of its own (an MCP session's task groups must be
entered and left in the same task), reconnected with backoff when it drops.

A call is handed to the owning task through a queue and runs there as a child of the
session; the caller waits for its result with its own timeout, and cancelling the
caller cancels the call. A server that cannot be reached is a warning and its tools are
marked unavailable; nothing here ever stops the service from starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from compound.core.errors import ToolTimedOut, ToolUnavailable, UnknownTool
from compound.core.logging import get_logger, redact_text
from compound.tools.catalogue import ServerState, Tool, ToolResult, declared_tool, make_tool
from compound.tools.config import McpServerConfig

if TYPE_CHECKING:  # the MCP client is imported when the first server connects: no server, no cost
    import httpx2
    from mcp.client import Client
    from mcp_types import CallToolResult

log = get_logger("compound.tools")

LIST_PAGES_MAX = 100  # a server whose cursor never ends cannot hang the listing
ERROR_MAX_CHARS = 300


@dataclass
class _Job:
    tool: str
    arguments: dict[str, Any]
    future: asyncio.Future[ToolResult]
    meta: dict[str, Any] | None = None


@dataclass
class _Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    current_s: float = field(init=False, default=0.0)

    def reset(self) -> None:
        self.current_s = 0.0

    def next(self) -> float:
        self.current_s = self.initial_s if self.current_s == 0 else min(self.current_s * 2, self.max_s)
        return self.current_s


class ToolServers:
    """Every configured MCP server of this process, its tools and its calls.

    `start` and `stop` run on the event loop that owns the sessions; `call` may be
    awaited from any loop (a call from another loop is handed over to this one).
    """

    def __init__(self, configs: Mapping[str, McpServerConfig], *, environ: Mapping[str, str] | None = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 stop_timeout_s: float = 5.0) -> None:
        self._servers = {name: _Server(name, config, environ=environ,
                                       backoff=_Backoff(backoff_initial_s, backoff_max_s))
                         for name, config in configs.items()}
        self._stop_timeout_s = stop_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open every server's session, each in its own task, and wait until each has
        connected or failed once (at most its `connect_timeout_s`); with no server, nothing."""
        if not self._servers:
            return
        self._loop = asyncio.get_running_loop()
        for server in self._servers.values():
            server.start()
        await asyncio.gather(*(server.first_attempt.wait() for server in self._servers.values()))

    async def stop(self) -> None:
        """Close every session, in the task that opened it."""
        await asyncio.gather(*(server.stop(self._stop_timeout_s) for server in self._servers.values()))

    def catalogue(self) -> list[Tool]:
        """Every tool kept after allow/deny, ordered by server then tool; a server not
        reached yet shows the tools its `allow` names, unavailable."""
        return [tool for name in sorted(self._servers) for tool in self._servers[name].catalogue()]

    def states(self) -> list[ServerState]:
        return [self._servers[name].state() for name in sorted(self._servers)]

    def tool(self, name: str) -> Tool:
        """The catalogue's entry for `server.tool`; UnknownTool when there is none."""
        server, _, tool = name.partition(".")
        found = self._servers[server].find(tool) if server in self._servers else None
        if found is None:
            known = ", ".join(t.name for t in self.catalogue()) or "none"
            raise UnknownTool(f"no tool {name!r} in the catalogue (known: {known})", tool=name)
        return found

    async def call(self, server: str, tool: str, arguments: Mapping[str, Any] | None = None, *,
                   timeout_s: float | None = None, meta: Mapping[str, Any] | None = None) -> ToolResult:
        """Call one tool. A result whose `is_error` is true is the tool's (or the server's)
        own failure. Raises UnknownTool, ToolUnavailable (server down, or the connection
        dropped during the call) or ToolTimedOut (no result within `timeout_s`, default
        the server's `timeout_s`; the call is cancelled). `meta` goes to the server as
        the request's `_meta` (the executor's idempotency key)."""
        if server not in self._servers or not self._servers[server].allowed(tool):
            raise UnknownTool(f"no tool {server}.{tool} in the catalogue", tool=f"{server}.{tool}")
        owner = self._servers[server]
        timeout = owner.config.timeout_s if timeout_s is None else timeout_s
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            handed = asyncio.run_coroutine_threadsafe(
                owner.call(tool, dict(arguments or {}), timeout, dict(meta) if meta else None), self._loop)
            return await asyncio.wrap_future(handed)
        return await owner.call(tool, dict(arguments or {}), timeout, dict(meta) if meta else None)


class _Server:
    """One server's session, owned by the task `run`."""

    def __init__(self, name: str, config: McpServerConfig, *, environ: Mapping[str, str] | None,
                 backoff: _Backoff) -> None:
        self.name, self.config = name, config
        self._environ = environ
        self._backoff = backoff
        self.tools: dict[str, Tool] = {}  # the last listing, kept after allow/deny
        self.available = False
        self.error: str | None = "not connected yet"
        self.first_attempt = asyncio.Event()
        self._jobs: asyncio.Queue[_Job | None] | None = None  # set while a session is open
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._secrets: list[str] = []
        self._session_up = False  # the current session got as far as listing the tools
        self._missing: set[str] = set()  # tools `allow` names that the server does not list

    # state -------------------------------------------------------------------------------

    def allowed(self, tool: str) -> bool:
        return self.config.allows(tool)

    def catalogue(self) -> list[Tool]:
        if self.tools:
            return [self.tools[t] if self.available else _unavailable(self.tools[t]) for t in sorted(self.tools)]
        return [declared_tool(self.name, self.config, t) for t in sorted(self.config.allow or ())]

    def find(self, tool: str) -> Tool | None:
        """The catalogue's entry for `tool` (as `catalogue()` shows it), looked up alone."""
        if self.tools:
            found = self.tools.get(tool)
            return found if found is None or self.available else _unavailable(found)
        return declared_tool(self.name, self.config, tool) if tool in (self.config.allow or ()) else None

    def state(self) -> ServerState:
        return ServerState(name=self.name, transport=self.config.transport, available=self.available,
                           tools=len(self.tools), error=None if self.available else self.error)

    # the owning task ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"mcp-server-{self.name}")

    async def stop(self, timeout_s: float) -> None:
        self._stopping.set()
        if self._jobs is not None:
            self._jobs.put_nowait(None)
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:  # stuck connecting or closing: cancel it (it still unwinds in its own task)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        first = True
        while not self._stopping.is_set():
            self._session_up = False
            try:
                await self._session()
            except Exception as exc:  # every failure of a session ends in a reconnect, never in a crash
                self.error = self._describe(exc)
                if self._session_up:
                    log.warning("MCP server connection lost; reconnecting", server=self.name, error=self.error)
                elif first:
                    log.warning("MCP server unreachable at start; its tools are unavailable",
                                server=self.name, error=self.error)
                else:
                    log.debug("MCP server still unreachable", server=self.name, error=self.error)
            finally:
                self._close_queue()
                first = False
                self.first_attempt.set()
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._backoff.next())

    async def _session(self) -> None:
        # Reads env: values now, so a secret lives only in the session's objects.
        client, http = self._client()
        with anyio.CancelScope(deadline=anyio.current_time() + self.config.connect_timeout_s) as connecting:
            async with http or contextlib.nullcontext(), client:
                tools = await self._list(client)
                connecting.deadline = math.inf
                self._up(tools)
                async with anyio.create_task_group() as group:
                    group.start_soon(self._heartbeat, client)
                    assert self._jobs is not None
                    while (job := await self._jobs.get()) is not None:
                        group.start_soon(self._run, client, job)
                    group.cancel_scope.cancel()
        if connecting.cancelled_caught:
            raise TimeoutError(f"no answer within {self.config.connect_timeout_s:g} s")

    def _client(self) -> tuple[Client, httpx2.AsyncClient | None]:
        import httpx2
        from mcp.client import Client
        from mcp.client.stdio import StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp_types import Implementation

        info = Implementation(name="compound", version="0.1.0")
        if self.config.url:
            headers = self.config.resolved_headers(self._environ)
            self._secrets = [v for v in headers.values() if len(v) >= 4]
            http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(self.config.connect_timeout_s, read=None))
            transport = streamable_http_client(self.config.url, http_client=http)
            return Client(transport, cache=None, client_info=info), http
        assert self.config.command is not None
        env = self.config.resolved_env(self._environ)
        self._secrets = [v for v in env.values() if len(v) >= 4]
        params = StdioServerParameters(command=self.config.command[0], args=self.config.command[1:],
                                       env=env or None, cwd=self.config.cwd)
        return Client(stdio_client(params), cache=None, client_info=info), None

    async def _list(self, client: Client) -> dict[str, Tool]:
        listed: list[Any] = []  # mcp_types.Tool
        cursor: str | None = None
        for _ in range(LIST_PAGES_MAX):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        missing = set(self.config.allow or ()) - {t.name for t in listed}
        for name in sorted(missing - self._missing):  # once, not at every re-listing
            log.warning("MCP server does not list a tool that allow names", server=self.name, tool=name)
        self._missing = missing
        tools = {}
        for t in listed:
            if not self.config.allows(t.name):
                continue
            hints = t.annotations
            tools[t.name] = make_tool(self.name, self.config, tool=t.name, description=t.description,
                                      input_schema=t.input_schema,
                                      read_only_hint=hints.read_only_hint if hints else None,
                                      idempotent_hint=hints.idempotent_hint if hints else None)
        return tools

    def _up(self, tools: dict[str, Tool]) -> None:
        was = self.available
        self.tools, self.available, self.error = tools, True, None
        self._session_up = True
        self._backoff.reset()
        self.first_attempt.set()
        if self._jobs is None:
            self._jobs = asyncio.Queue()
            if self._stopping.is_set():  # stop came while connecting: end the session at once
                self._jobs.put_nowait(None)
        if not was:
            log.info("MCP server connected", server=self.name, transport=self.config.transport, tools=len(tools))

    def _close_queue(self) -> None:
        """The session is gone: calls still queued fail as unavailable."""
        self.available = False
        jobs, self._jobs = self._jobs, None
        while jobs is not None and not jobs.empty():
            job = jobs.get_nowait()
            if job is not None and not job.future.done():
                job.future.set_exception(self._lost(job.tool))

    async def _heartbeat(self, client: Client) -> None:
        """Re-list the tools now and then: a dead connection is noticed while idle, and the
        catalogue follows the server. A failure ends the session (the caller reconnects)."""
        while True:
            await anyio.sleep(self.config.ping_interval_s)
            with anyio.fail_after(self.config.connect_timeout_s):
                tools = await self._list(client)
            self._up(tools)

    async def _run(self, client: Client, job: _Job) -> None:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        if job.future.done():  # the caller gave up while the call was queued
            return
        with anyio.CancelScope() as scope:
            job.future.add_done_callback(lambda _f: scope.cancel())
            try:
                result = await client.call_tool(job.tool, job.arguments, meta=job.meta)  # type: ignore[arg-type]
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED:  # the server went away: end the session, reconnect
                    self.available, self.error = False, "the connection was lost"
                    _settle(job, exc=self._lost(job.tool))
                    raise
                else:  # the server refused the call (unknown tool, bad arguments ...): the model reads why
                    _settle(job, result=ToolResult(f"{self.name}.{job.tool}", self._scrub(exc.message), True))
                return
            except ValidationError as exc:
                _settle(job, result=ToolResult(f"{self.name}.{job.tool}", self._scrub(
                    f"the server's answer is not a valid MCP result ({exc.error_count()} errors)"), True))
                return
            except Exception:
                self.available, self.error = False, "the connection was lost"
                _settle(job, exc=self._lost(job.tool))
                raise  # the session is broken: end it and reconnect
            else:
                _settle(job, result=ToolResult(f"{self.name}.{job.tool}", content_text(result),
                                               bool(result.is_error)))
            finally:
                if not job.future.done():  # cancelled with the session
                    _settle(job, exc=self._lost(job.tool))

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float,
                   meta: dict[str, Any] | None = None) -> ToolResult:
        name = f"{self.name}.{tool}"
        if not self.available or self._jobs is None:
            raise ToolUnavailable(f"the MCP server {self.name!r} is unavailable ({self.error or 'not connected'}); "
                                  f"{name} cannot be called now", tool=name)
        job = _Job(tool, arguments, asyncio.get_running_loop().create_future(), meta)
        self._jobs.put_nowait(job)
        try:
            async with asyncio.timeout(timeout_s):  # cancels the future: its callback ends the call
                return await job.future
        except TimeoutError:
            raise ToolTimedOut(f"{name} gave no result within {timeout_s:g} s; the call was cancelled",
                               tool=name, timeout_s=timeout_s) from None

    # words -------------------------------------------------------------------------------

    def _lost(self, tool: str) -> ToolUnavailable:
        return ToolUnavailable(f"the connection to the MCP server {self.name!r} was lost during the call of "
                               f"{self.name}.{tool}", tool=f"{self.name}.{tool}")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return redact_text(text)

    def _describe(self, exc: BaseException) -> str:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        message = getattr(exc, "message", None) or str(exc)
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        return self._scrub(text)[:ERROR_MAX_CHARS]


def _settle(job: _Job, *, result: ToolResult | None = None, exc: BaseException | None = None) -> None:
    if job.future.done():
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)  # type: ignore[arg-type]


def _unavailable(tool: Tool) -> Tool:
    from dataclasses import replace

    return replace(tool, available=False)


def content_text(result: CallToolResult) -> str:
    """A call's content as one text: text parts as they are, other parts named."""
    parts: list[str] = []
    for item in result.content:
        kind = getattr(item, "type", "")
        if kind == "text":
            parts.append(item.text)  # type: ignore[union-attr]
        elif kind == "resource":
            resource = item.resource  # type: ignore[union-attr]
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {item.uri}]")  # type: ignore[union-attr]
        else:
            parts.append(f"[{kind} {getattr(item, 'mime_type', '')}]".replace(" ]", "]"))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)
