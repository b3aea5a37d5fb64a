"""`compound tools list`: the catalogue of MCP tools of a running server (token from
COMPOUND_TOKEN); `compound tools demo-server`: the tour's offline MCP server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="COMPOUND_URL", help="the server")


def print_steps(console: Console, steps: list[dict[str, Any]]) -> None:
    """The step kinds a plan may name (`kind`), after the tools."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from compound.cli.output import clip

    if not steps:
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("step kind", no_wrap=True)
    table.add_column("arguments", overflow="fold")
    table.add_column("description", no_wrap=True, overflow="ellipsis")
    for s in steps:
        table.add_row(Text(s["name"]), Text(", ".join(s.get("arguments") or [])), Text(clip(s["description"], 100)))
    console.print(table)


def register(app: typer.Typer) -> None:
    tools = typer.Typer(help="Tools from the configured MCP servers.", no_args_is_help=True)
    app.add_typer(tools, name="tools")

    @tools.command("list")
    def list_(url: str = URL, as_json: bool = typer.Option(False, "--json")) -> None:
        """The tools subtasks may use: name, read-only, up or down, arguments, description;
        then each server unavailable and why; then the registered step kinds."""
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from compound.cli.common import api_request
        from compound.cli.output import clip

        data: dict[str, Any] = api_request("GET", url, "/v1/tools")
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        console = Console()
        steps = data.get("steps") or []
        if not data["tools"] and not data.get("servers"):
            console.print("no MCP servers configured (docs/tools.md)", markup=False)
            print_steps(console, steps)
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        table.add_column("tool", no_wrap=True)  # plans name tools by this: never cut
        table.add_column("read-only", no_wrap=True)
        table.add_column("up", no_wrap=True)
        table.add_column("arguments", overflow="fold")
        table.add_column("description", no_wrap=True, overflow="ellipsis")
        for t in data["tools"]:
            table.add_row(Text(t["name"]), "yes" if t["read_only"] else "no", "yes" if t["available"] else "no",
                          Text(", ".join(t.get("arguments") or [])), Text(clip(t["description"], 100)))
        console.print(table)
        for server in data.get("servers") or []:
            if not server["available"]:
                console.print(Text(f"{server['name']}: unavailable ({server.get('error') or 'not connected'})",
                                   style="yellow"))
        print_steps(console, steps)

    @tools.command("demo-server")
    def demo_server(port: int = typer.Option(9100, "--port", help="the port on 127.0.0.1 (0: any free one)")) -> None:
        """A small MCP server for trying tools offline (streamable HTTP on 127.0.0.1):
        lookup (read-only facts), note and notes. Prints its URL, then serves until Ctrl-C."""
        from compound.tools.demo import bind, serve

        try:
            sock = bind(port)
        except OSError as exc:  # the port is taken, or not ours to bind
            typer.echo(f"error: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        serve(sock)
