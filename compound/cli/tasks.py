"""`compound tasks list | show | cancel | watch` against a running server."""

from __future__ import annotations

import json

import typer

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="COMPOUND_URL", help="the server")


def register(app: typer.Typer) -> None:
    tasks = typer.Typer(help="Talk to a running server (token from COMPOUND_TOKEN).", no_args_is_help=True)
    app.add_typer(tasks, name="tasks")

    @tasks.command("list")
    def list_(url: str = URL, limit: int = typer.Option(20, min=1, max=100),
              status: str | None = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
        """Recent tasks, newest first."""
        from rich.console import Console
        from rich.table import Table

        from compound.cli.common import api_request

        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        data = api_request("GET", url, "/v1/tasks", params=params)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        table = Table("id", "status", "subtasks", "cost $", "created", "prompt")
        for t in data["tasks"]:
            table.add_row(t["id"], t["status"], f"{t['subtasks_done']}/{t['subtasks_total']}",
                          f"{t['total_cost_usd']:.6f}", t["created_at"] or "", t["prompt"][:60])
        Console().print(table)

    @tasks.command("show")
    def show(task_id: str, url: str = URL, as_json: bool = typer.Option(False, "--json")) -> None:
        """One task: its subtasks, result and cost."""
        from compound.cli.common import api_request
        from compound.cli.live import render_snapshot

        data = api_request("GET", url, f"/v1/tasks/{task_id}")
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        from rich.console import Console

        Console().print(render_snapshot(data))
        if data.get("result"):
            Console().print(data["result"])

    @tasks.command("cancel")
    def cancel(task_id: str, url: str = URL) -> None:
        """Cancel a running task."""
        from compound.cli.common import api_request

        data = api_request("POST", url, f"/v1/tasks/{task_id}/cancel")
        typer.echo(f"{data['id']} {data['status']} (cost so far ${data['total_cost_usd']:.6f})")

    @tasks.command("watch")
    def watch(task_id: str, url: str = URL) -> None:
        """A live tree of the task's subtasks until it ends, then its cost table. Follows
        the task's event stream (SSE) and redraws on each event."""
        from rich.console import Console
        from rich.live import Live

        from compound.cli.common import api_request, follow_events
        from compound.cli.live import cost_table, render_snapshot
        from compound.store.models import TERMINAL_TASK

        console = Console()
        data = api_request("GET", url, f"/v1/tasks/{task_id}")
        with Live(render_snapshot(data), console=console, refresh_per_second=8) as live:
            if data["status"] not in TERMINAL_TASK:
                for _ in follow_events(url, f"/v1/tasks/{task_id}/events"):
                    data = api_request("GET", url, f"/v1/tasks/{task_id}")
                    live.update(render_snapshot(data))
                data = api_request("GET", url, f"/v1/tasks/{task_id}")
                live.update(render_snapshot(data))
        console.print(cost_table(data))
        if data.get("result"):
            console.print(data["result"])
