"""The tour's MCP server (`compound tools demo-server`): a few tools that need no network,
served over streamable HTTP on 127.0.0.1, so a plan's subtasks can act offline.

Tools: `lookup` (read-only: a fact from a small built-in table), `note` (not read-only:
keeps a note in memory and returns how many there are) and `notes` (read-only: the
notes kept). Each declares its annotations (`readOnlyHint`, `idempotentHint`), which
compound counts for a server configured with `trusted = true`.
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

HOST = "127.0.0.1"  # loopback only: the tour's server is never reachable from elsewhere
NOTES_MAX = 1000  # what a long-running tour server keeps at most

Topic = Literal["anthropic", "openai", "sqlite", "postgresql"]

FACTS: dict[str, str] = {
    "anthropic": "Anthropic's status page: https://status.anthropic.com (incidents and uptime of the API).",
    "openai": "OpenAI's status page: https://status.openai.com (incidents and uptime of the API).",
    "sqlite": "SQLite: one file and no server; in WAL mode readers go on while one writer writes. "
              "Enough for a small team's service on one machine.",
    "postgresql": "PostgreSQL: a server with many concurrent writers (MVCC), roles, replication and "
                  "extensions. The choice once more than one machine writes.",
}


def build_server() -> MCPServer:
    """A fresh server with its own notes."""
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ToolAnnotations

    server = MCPServer(name="compound-demo", log_level="WARNING")
    kept: list[str] = []

    @server.tool(description="Look up a fact from a built-in table: status pages of model providers, SQLite "
                             "and PostgreSQL basics.",
                 annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    async def lookup(topic: Topic) -> str:
        return FACTS[topic]

    @server.tool(description="Keep a note in memory; answers how many notes are kept.",
                 annotations=ToolAnnotations(read_only_hint=False, idempotent_hint=False))
    async def note(text: str) -> int:
        kept.append(text[:2000])
        del kept[:-NOTES_MAX]
        return len(kept)

    @server.tool(description="The notes kept so far, one a line, oldest first.",
                 annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    async def notes() -> str:
        return "\n".join(line.replace("\n", " ") for line in kept) or "(no notes yet)"

    return server


def _app(server: MCPServer) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def healthz(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app: Starlette = server.streamable_http_app(host=HOST)
    app.router.routes.append(Route("/healthz", healthz, methods=["GET"]))
    return app


def bind(port: int) -> socket.socket:
    """A listening socket on the loopback address (port 0: any free port)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    return sock


def serve(sock: socket.socket) -> None:
    """Serve on a socket from `bind` until interrupted; prints the endpoint's URL first."""
    import uvicorn

    url = f"http://{HOST}:{sock.getsockname()[1]}/mcp"
    sys.stdout.write(url + "\n")  # alone on its line: what a script reads
    sys.stdout.flush()
    sys.stderr.write(f"compound demo MCP server (tools: lookup, note, notes); point compound at it with:\n"
                     f"  export COMPOUND_MCP_SERVERS='{{\"demo\": {{\"url\": \"{url}\", \"trusted\": true}}}}'\n")
    config = uvicorn.Config(_app(build_server()), log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
