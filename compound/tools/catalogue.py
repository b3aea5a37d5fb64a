"""What the tools of the configured MCP servers look like to the rest of compound:
the catalogue's entries, a call's result, a server's state. Pure values, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from compound.tools.config import McpServerConfig

DESCRIPTION_MAX_CHARS = 200


@dataclass(frozen=True)
class Tool:
    """One tool of one server, as the catalogue shows it."""

    server: str
    tool: str  # the name the server gives it
    description: str  # one line
    arguments: tuple[str, ...]
    input_schema: Mapping[str, Any]
    read_only: bool
    idempotent: bool
    available: bool

    @property
    def name(self) -> str:
        return f"{self.server}.{self.tool}"


@dataclass(frozen=True)
class ToolResult:
    """A finished call: the tool's content as text; `is_error` when the tool (or the
    server, refusing the call) says it failed."""

    tool: str  # server.tool
    text: str
    is_error: bool


@dataclass(frozen=True)
class ServerState:
    name: str
    transport: Literal["http", "stdio"]
    available: bool
    tools: int  # tools kept after allow/deny
    error: str | None  # why it is unavailable (never a secret)


def one_line(description: str | None) -> str:
    """The first non-blank line, cut at a word to DESCRIPTION_MAX_CHARS."""
    line = next((ln.strip() for ln in (description or "").splitlines() if ln.strip()), "")
    if len(line) <= DESCRIPTION_MAX_CHARS:
        return line
    cut = line[:DESCRIPTION_MAX_CHARS - 1].rsplit(" ", 1)[0]
    return cut + "…"


def argument_names(schema: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The top-level property names of a JSON schema, required ones first."""
    properties = (schema or {}).get("properties")
    if not isinstance(properties, Mapping):
        return ()
    required = [n for n in (schema or {}).get("required") or () if n in properties]
    return tuple(required + [n for n in properties if n not in required])


def make_tool(server: str, config: McpServerConfig, *, tool: str, description: str | None,
              input_schema: Mapping[str, Any] | None, read_only_hint: bool | None,
              idempotent_hint: bool | None, available: bool = True) -> Tool:
    """A listed tool under section 11's rules: read-only when the configuration says so,
    or when a trusted server's own annotation does; idempotent likewise, and every
    read-only tool is."""
    read_only = tool in config.read_only or (config.trusted and read_only_hint is True)
    idempotent = read_only or tool in config.idempotent or (config.trusted and idempotent_hint is True)
    return Tool(server=server, tool=tool, description=one_line(description),
                arguments=argument_names(input_schema), input_schema=dict(input_schema or {}),
                read_only=read_only, idempotent=idempotent, available=available)


def declared_tool(server: str, config: McpServerConfig, tool: str) -> Tool:
    """A tool known only from `allow` (its server has not been reached yet)."""
    return make_tool(server, config, tool=tool, description=None, input_schema=None, read_only_hint=None,
                     idempotent_hint=None, available=False)


class Tools(Protocol):
    """What uses tools needs of them: ToolServers, or a fake in tests."""

    def catalogue(self) -> list[Tool]: ...

    def tool(self, name: str) -> Tool:
        """The entry for `server.tool`; UnknownTool when there is none."""
        ...

    async def call(self, server: str, tool: str, arguments: Mapping[str, Any] | None = None, *,
                   timeout_s: float | None = None, meta: Mapping[str, Any] | None = None) -> ToolResult:
        """One call (`meta`: the request's `_meta`); raises UnknownTool, ToolUnavailable
        or ToolTimedOut."""
        ...
