"""`compound tasks submit | list | show | result | watch | cancel | approve | rerun |
approve-call | deny-call`
against a running server (token from COMPOUND_TOKEN)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from compound.cli.common import DEFAULT_URL

URL = typer.Option(DEFAULT_URL, "--url", envvar="COMPOUND_URL", help="the server (or COMPOUND_URL)")
FILE_HELP = "read the request from this file (`-`: stdin); or give `-` as the request"


def _console() -> Any:
    from rich.console import Console

    return Console()


def _watch(url: str, task_id: str, *, held: bool = False) -> dict[str, Any]:
    """A live tree of the task until it ends (or, when `held`, until it is planned and
    waits for approval), then its costs, error and answer. Redrawn per event of the
    task's stream."""
    from rich.live import Live

    from compound.cli.common import api_request, follow_events
    from compound.cli.live import cost_table, render_snapshot
    from compound.cli.output import print_answer, print_notice, print_outcome
    from compound.store.models import TERMINAL_TASK

    console = _console()
    data: dict[str, Any] = api_request("GET", url, f"/v1/tasks/{task_id}")

    def going(d: dict[str, Any]) -> bool:
        return d["status"] not in TERMINAL_TASK and not (held and d["status"] == "planned")

    def updates() -> Iterator[dict[str, Any]]:
        """A fresh snapshot per event of the task's stream (SSE: nothing is read while
        nothing changes), and the last one once it ends (or, when held, is planned)."""
        if not going(data):
            return
        for ev in follow_events(url, f"/v1/tasks/{task_id}/events"):
            d = ev.get("data") or {}
            if ev.get("event") == "task" and (d.get("status") in TERMINAL_TASK
                                              or (held and d.get("status") == "planned")):
                break
            yield api_request("GET", url, f"/v1/tasks/{task_id}")
        yield api_request("GET", url, f"/v1/tasks/{task_id}")

    print_notice(console, data)
    if console.is_terminal:
        with Live(render_snapshot(data), console=console, refresh_per_second=8,
                  redirect_stderr=sys.stderr.isatty()) as live:
            for data in updates():
                live.update(render_snapshot(data))
    else:  # piped: no redraws, the final tree once
        snaps = list(updates())
        data = snaps[-1] if snaps else data
        console.print(render_snapshot(data))
    if held and data["status"] == "planned":
        console.print(f"waiting for approval: compound tasks approve {task_id}", markup=False)
        return data
    console.print(cost_table(data))
    print_outcome(console, data)
    print_answer(console, data.get("result"))
    return data


def _planned(url: str, task_id: str) -> str:
    """Follow the task's events until it has a plan (or ended without one); its status."""
    from compound.cli.common import follow_events

    status = "queued"
    for event in follow_events(url, f"/v1/tasks/{task_id}/events"):
        if event.get("event") == "task":
            status = str(event["data"].get("status"))
            if status not in ("queued", "planning"):
                break
    return status


tasks = typer.Typer(help="Talk to a running server (token from COMPOUND_TOKEN).", no_args_is_help=True)


@tasks.command("submit")
def submit(
    request: str | None = typer.Argument(None, help="what you want done (`-`: read it from stdin)"),
    file: Path | None = typer.Option(None, "--file", "-f", help=FILE_HELP),
    url: str = URL,
    budget: float | None = typer.Option(None, "--budget", help="hard cap in USD (more than 0)"),
    plan: Path | None = typer.Option(None, "--plan", help="a PlanIn JSON file to run instead of planning"),
    hold: bool = typer.Option(False, "--hold", help="stop at `planned` until `compound tasks approve`"),
    watch: bool = typer.Option(False, "--watch", help="follow it live, then print the answer"),
    interval: float = typer.Option(0.5, min=0.05, hidden=True,  # noqa: ARG001  (scripts pass it)
                                   help="unused: --watch follows the task's event stream"),
) -> None:
    """Submit a request; print its id (stdout), or follow it with --watch."""
    from compound.cli.common import api_request, read_prompt

    # The server's COMPOUND_MAX_PROMPT_CHARS decides (its error says the limit).
    body: dict[str, Any] = {"prompt": read_prompt(request, file), "approve": not hold}
    body.update(_budget_and_plan(budget, plan))
    data = api_request("POST", url, "/v1/tasks", json=body)
    if hold and not watch:
        # Held for review: the id comes once there is a plan to review and approve
        # (so `compound tasks approve` right after it finds the task planned).
        status = _planned(url, data["id"])
        typer.echo(data["id"])
        if status != "planned":
            typer.echo(f"error: task {data['id']} ended {status} before it had a plan to approve", err=True)
            raise typer.Exit(1)
        typer.echo(f"planned; review it with `compound tasks watch {data['id']}`, "
                   f"start it with `compound tasks approve {data['id']}`", err=True)
        return
    if not watch:
        typer.echo(data["id"])
        return
    typer.echo(f"submitted {data['id']}", err=True)
    final = _watch(url, data["id"], held=hold)
    raise typer.Exit(0 if final["status"] in ("completed", "planned") else 1)

@tasks.command("list")
def list_(url: str = URL, limit: int = typer.Option(20, min=1, max=100),
          status: str | None = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Recent tasks, newest first."""
    from rich.table import Table
    from rich.text import Text

    from compound.cli.common import api_request
    from compound.cli.output import clip

    params: dict[str, str | int] = {"limit": limit}
    if status:
        params["status"] = status
    data = api_request("GET", url, "/v1/tasks", params=params)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich import box

    console = _console()
    wide = console.width >= 100  # the creation time only where it fits
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    columns = (("id", 18), ("status", 9), ("done", 5), ("cost $", 8)) + ((("created", 19),) if wide else ())
    for name, width in columns:
        table.add_column(name, no_wrap=True, min_width=width)  # ids are copied from here: never cut
    table.add_column("prompt", no_wrap=True, overflow="ellipsis")
    room = max(8, console.width - sum(w for _, w in columns) - 3 * len(columns) - 2)
    for t in data["tasks"]:
        cells = [Text(t["id"]), t["status"], f"{t['subtasks_done']}/{t['subtasks_total']}",
                 f"{t['total_cost_usd']:.6f}"]
        if wide:
            cells.append((t["created_at"] or "")[:19].replace("T", " "))
        table.add_row(*cells, Text(clip(t["prompt"], min(200, room)), overflow="ellipsis"))
    console.print(table)

@tasks.command("show")
def show(task_id: str, url: str = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """One task: its subtasks, error, cost and answer."""
    from compound.cli.common import api_request
    from compound.cli.live import render_snapshot
    from compound.cli.output import print_answer, print_notice, print_outcome

    data = api_request("GET", url, f"/v1/tasks/{task_id}")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    console = _console()
    console.print(render_snapshot(data))
    print_notice(console, data)
    print_outcome(console, data)
    print_answer(console, data.get("result"))

@tasks.command("result")
def result(task_id: str, url: str = URL) -> None:
    """Only the answer: Markdown in a terminal, the raw text when piped."""
    from compound.cli.common import api_request
    from compound.cli.output import print_answer

    data = api_request("GET", url, f"/v1/tasks/{task_id}")
    if not data.get("result"):
        why = f": {data['error']}" if data.get("error") else ""
        typer.echo(f"error: task {task_id} is {data['status']} and has no answer yet{why}", err=True)
        raise typer.Exit(1)
    print_answer(_console(), data["result"])
    if data["status"] != "completed":
        typer.echo(f"note: the task is {data['status']}; this answer is partial", err=True)

@tasks.command("cancel")
def cancel(task_id: str, url: str = URL) -> None:
    """Cancel a running task (in-flight calls are stopped)."""
    from compound.cli.common import api_request
    from compound.cli.output import held_usd

    data = api_request("POST", url, f"/v1/tasks/{task_id}/cancel")
    line = f"{data['id']} {data['status']} (cost so far ${data['total_cost_usd']:.6f}"
    held = held_usd(data)
    if held > 0:
        line += f", of which ${held:.6f} is held for calls canceled in flight, counted at their worst case"
    typer.echo(line + ")")

@tasks.command("approve")
def approve(task_id: str, url: str = URL) -> None:
    """Start a task held at `planned` (submitted with --hold)."""
    from compound.cli.common import api_request

    data = api_request("POST", url, f"/v1/tasks/{task_id}/approve")
    typer.echo(f"{data['id']} approved ({data['status']})")

@tasks.command("approve-call")
def approve_call(task_id: str, call_id: str, url: str = URL, arguments: str | None = typer.Option(
        None, "--arguments", help="a JSON object to send instead of the model's arguments")) -> None:
    """Run a tool call held for approval (its id is in `compound tasks show ID --json`)."""
    from compound.cli.common import api_request

    body: dict[str, Any] = {}
    if arguments is not None:
        try:
            body["arguments"] = json.loads(arguments)
        except ValueError as exc:
            typer.echo(f"error: --arguments is not JSON: {exc}", err=True)
            raise typer.Exit(2) from None
        if not isinstance(body["arguments"], dict):
            typer.echo("error: --arguments must be a JSON object, like '{\"n\": 2}'", err=True)
            raise typer.Exit(2)
    data = api_request("POST", url, f"/v1/tasks/{task_id}/tool-calls/{call_id}/approve", json=body)
    typer.echo(f"{data['id']} approved ({data['tool']}, {data['status']})")

@tasks.command("deny-call")
def deny_call(task_id: str, call_id: str, url: str = URL, message: str | None = typer.Option(
        None, "--message", help="why; the model reads it")) -> None:
    """Refuse a tool call held for approval: it is never sent, and the model is told."""
    from compound.cli.common import api_request

    body = {} if message is None else {"message": message}
    data = api_request("POST", url, f"/v1/tasks/{task_id}/tool-calls/{call_id}/deny", json=body)
    typer.echo(f"{data['id']} denied ({data['tool']})")

@tasks.command("rerun")
def rerun(
    task_id: str,
    url: str = URL,
    plan: Path | None = typer.Option(None, "--plan", help="an edited PlanIn JSON file (default: the same plan)"),
    budget: float | None = typer.Option(None, "--budget", help="hard cap in USD (default: the earlier budget)"),
    models: list[str] = typer.Option(
        [], "--models", metavar="TIER=MODEL[,MODEL...]",
        help="a tier's models for the new task, primary first (repeat for each tier changed), "
             "e.g. 2=openai/gpt-4.1-mini"),
    watch: bool = typer.Option(False, "--watch", help="follow it live, then print the answer"),
) -> None:
    """Run a task again; subtasks whose inputs are unchanged reuse the earlier results
    at no cost. Prints the new task's id (stdout), or follows it with --watch."""
    from compound.cli.common import api_request

    body: dict[str, Any] = {}
    body.update(_budget_and_plan(budget, plan))
    if models:
        body["models"] = _tier_models(models)
    data = api_request("POST", url, f"/v1/tasks/{task_id}/rerun", json=body)
    if not watch:
        typer.echo(data["id"])
        return
    typer.echo(f"submitted {data['id']} (a re-run of {task_id})", err=True)
    final = _watch(url, data["id"])
    raise typer.Exit(0 if final["status"] == "completed" else 1)

@tasks.command("watch")
def watch(task_id: str, url: str = URL, interval: float = typer.Option(  # noqa: ARG001  (scripts pass it)
        0.5, min=0.05, hidden=True, help="unused: the tree follows the task's event stream")) -> None:
    """A live tree of the task's subtasks until it ends, then its costs, error and answer."""
    final = _watch(url, task_id)
    raise typer.Exit(0 if final["status"] in ("completed", "planned") else 1)


def register(app: typer.Typer) -> None:
    app.add_typer(tasks, name="tasks")


def _tier_models(given: list[str]) -> dict[str, list[str]]:
    """`--models 2=a,b` as the request's {"2": ["a", "b"]}; the server checks the tiers
    and that it is configured with the models."""
    out: dict[str, list[str]] = {}
    for item in given:
        tier, sep, names = item.partition("=")
        listed = [n.strip() for n in names.split(",") if n.strip()]
        if not sep or not tier.strip() or not listed:
            raise typer.BadParameter(f"{item!r}: expected TIER=MODEL[,MODEL...], e.g. 2=openai/gpt-4.1-mini",
                                     param_hint="--models")
        out[tier.strip()] = listed
    return out


def _budget_and_plan(budget: float | None, plan: Path | None) -> dict[str, Any]:
    """The request fields of `--budget` and `--plan` (submit and rerun alike)."""
    out: dict[str, Any] = {}
    if budget is not None:
        if budget <= 0:
            typer.echo("error: --budget must be more than 0", err=True)
            raise typer.Exit(2)
        out["budget_usd"] = budget
    if plan is not None:
        try:
            out["plan"] = json.loads(plan.read_text())
        except (OSError, ValueError) as exc:
            typer.echo(f"error: cannot read the plan: {exc}", err=True)
            raise typer.Exit(1) from None
    return out
