"""What the MCP door's tools act on: compound's tasks through the engine door in this
process (LocalTasks), or through a running server's REST routes (RemoteTasks)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import quote

from mcp.server.mcpserver.exceptions import ToolError

from compound.api.doors.engine import Door
from compound.store.values import Principal


class Tasks(Protocol):
    """What the tools need: the engine door in-process, or a server over HTTP."""

    async def submit(self, *, prompt: str, budget_usd: float | None, priority: int | None,
                     plan: dict[str, Any] | None, approve: bool) -> dict[str, Any]: ...
    async def get(self, task_id: str) -> dict[str, Any]: ...
    async def list(self, *, limit: int, status: str | None, cursor: str | None) -> dict[str, Any]: ...
    async def cancel(self, task_id: str) -> dict[str, Any]: ...
    async def approve(self, task_id: str) -> dict[str, Any]: ...
    async def decide(self, task_id: str, call_id: str, *, approve: bool, arguments: dict[str, Any] | None,
                     message: str | None) -> dict[str, Any]: ...
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

    async def decide(self, task_id: str, call_id: str, *, approve: bool, arguments: dict[str, Any] | None,
                     message: str | None) -> dict[str, Any]:
        return await self.door.decide_call(self.principal, task_id, call_id, approve=approve, arguments=arguments,
                                           message=message)

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

    async def decide(self, task_id: str, call_id: str, *, approve: bool, arguments: dict[str, Any] | None,
                     message: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if approve and arguments is not None:
            body["arguments"] = arguments
        if not approve and message is not None:
            body["message"] = message
        path = f"/v1/tasks/{quote(task_id, safe='')}/tool-calls/{quote(call_id, safe='')}/"
        return await self._call("POST", path + ("approve" if approve else "deny"), json=body)

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
