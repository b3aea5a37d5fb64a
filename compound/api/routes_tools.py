"""/v1/tools: the catalogue of tools from the configured MCP servers."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from compound.api.auth import ReadPrincipal
from compound.api.errors import COMMON_RESPONSES
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


class ToolCatalogue(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "tools": [{"name": "facts.lookup", "server": "facts", "description": "Look up a fact.",
                   "arguments": ["query", "limit"], "read_only": True, "available": True},
                  {"name": "files.read", "server": "files", "description": "", "arguments": [],
                   "read_only": False, "available": False}],
        "servers": [{"name": "facts", "transport": "http", "available": True, "tools": 1, "error": None},
                    {"name": "files", "transport": "stdio", "available": False, "tools": 0,
                     "error": "FileNotFoundError: [Errno 2] No such file or directory: 'files-server'"}]}]})

    tools: list[ToolOut]
    servers: list[ServerOut]


@router.get("/tools", response_model=ToolCatalogue, summary="The tools of the configured MCP servers")
async def list_tools(request: Request, _principal: ReadPrincipal) -> ToolCatalogue:
    servers: ToolServers = request.app.state.tool_servers
    return ToolCatalogue(
        tools=[ToolOut(name=t.name, server=t.server, description=t.description, arguments=list(t.arguments),
                       read_only=t.read_only, available=t.available) for t in servers.catalogue()],
        servers=[ServerOut(name=s.name, transport=s.transport, available=s.available, tools=s.tools,
                           error=s.error) for s in servers.states()])
