"""/v1/tools: the catalogue the planner sees (tools from the configured MCP servers and
the registered step kinds); and the decisions
on tool calls held for approval (/v1/tasks/{id}/tool-calls/{call_id}/approve | deny)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from compound.api.auth import Principal, ReadPrincipal, SubmitPrincipal
from compound.api.doors.engine import Door
from compound.api.errors import COMMON_RESPONSES, _err
from compound.api.schemas import ToolCallApproveIn, ToolCallDecided, ToolCallDenyIn
from compound.api.state import app_state
from compound.plugins import load_plugins
from compound.tools.servers import ToolServers

router = APIRouter(prefix="/v1", tags=["tools"], responses=COMMON_RESPONSES)


class ToolOut(BaseModel):
    name: str = Field(description="server.tool: how a plan names it")
    server: str
    description: str = Field(description="the server's description, first line")
    arguments: list[str] = Field(description="the argument names, required ones first")
    read_only: bool = Field(description="declared read-only in the configuration (or by a trusted server)")
    available: bool = Field(description="its server is connected now")


class ServerOut(BaseModel):
    name: str
    transport: Literal["http", "stdio"]
    available: bool
    tools: int = Field(description="tools kept after allow/deny")
    error: str | None = Field(description="why it is unavailable")


class StepKindOut(BaseModel):
    name: str = Field(description="how a plan names it (`kind`)")
    description: str = Field(description="its description, first line")
    arguments: list[str] = Field(description="the argument names, required ones first")
    arguments_schema: dict[str, Any] = Field(description="the JSON schema a plan's `arguments` must meet")


class ToolCatalogue(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "tools": [{"name": "facts.lookup", "server": "facts", "description": "Look up a fact.",
                   "arguments": ["query", "limit"], "read_only": True, "available": True},
                  {"name": "files.read", "server": "files", "description": "", "arguments": [],
                   "read_only": False, "available": False}],
        "servers": [{"name": "facts", "transport": "http", "available": True, "tools": 1, "error": None},
                    {"name": "files", "transport": "stdio", "available": False, "tools": 0,
                     "error": "FileNotFoundError: [Errno 2] No such file or directory: 'files-server'"}],
        "steps": [{"name": "word_count", "description": "Count the words of a text.", "arguments": ["text"],
                   "arguments_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}]}]})

    tools: list[ToolOut]
    servers: list[ServerOut]
    steps: list[StepKindOut] = Field(description="the registered step kinds (COMPOUND_PLUGINS) a plan may name")


@router.get("/tools", response_model=ToolCatalogue,
           summary="The catalogue the planner sees: MCP tools and registered step kinds")
async def list_tools(request: Request, _principal: ReadPrincipal) -> ToolCatalogue:
    servers: ToolServers = request.app.state.tool_servers
    plugins = load_plugins(app_state(request.app).settings.plugins)
    return ToolCatalogue(
        steps=[StepKindOut(name=c.name, description=c.description, arguments=list(c.arguments),
                           arguments_schema=dict(plugins.steps[c.name].arguments_schema)) for c in plugins.cards()],
        tools=[ToolOut(name=t.name, server=t.server, description=t.description, arguments=list(t.arguments),
                       read_only=t.read_only, available=t.available) for t in servers.catalogue()],
        servers=[ServerOut(name=s.name, transport=s.transport, available=s.available, tools=s.tools,
                           error=s.error) for s in servers.states()])


# approval of tool calls (design.md section 11) ------------------------------------------

_DECIDE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _err("no such task or tool call, or not yours"),
    409: _err("the call does not await approval (decided already, or never held)"),
}


async def _decide(request: Request, principal: Principal, task_id: str, call_id: str, *, approve: bool,
                  arguments: dict[str, Any] | None = None, message: str | None = None) -> dict[str, Any]:
    """Write the decision (only while the call awaits it), then wake the run holding it."""
    return await Door(app_state(request.app)).decide_call(principal, task_id, call_id, approve=approve,
                                                          arguments=arguments, message=message)


@router.post("/tasks/{task_id}/tool-calls/{call_id}/approve", response_model=ToolCallDecided,
             responses=_DECIDE_RESPONSES, summary="Run a tool call held for approval",
             description="The call is sent once, with `arguments` when given (edited), else with the model's.")
async def approve_call(request: Request, task_id: str, call_id: str, principal: SubmitPrincipal,
                       body: ToolCallApproveIn | None = None) -> Any:
    arguments = body.arguments if body is not None else None
    return await _decide(request, principal, task_id, call_id, approve=True, arguments=arguments)


@router.post("/tasks/{task_id}/tool-calls/{call_id}/deny", response_model=ToolCallDecided,
             responses=_DECIDE_RESPONSES, summary="Refuse a tool call held for approval",
             description="The call ends `denied` without being sent; the model reads the refusal (with "
                         "`message`) as its result, and a direct call's subtask fails.")
async def deny_call(request: Request, task_id: str, call_id: str, principal: SubmitPrincipal,
                    body: ToolCallDenyIn | None = None) -> Any:
    message = body.message if body is not None else None
    return await _decide(request, principal, task_id, call_id, approve=False, message=message)
