"""`compound run "request"`: one task in-process with a live tree, then the answer
and a cost table per model and tier."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        request: str = typer.Argument(..., help="what you want done"),
        budget: float | None = typer.Option(None, "--budget", min=0.0, help="hard cap in USD"),
        plan: Path | None = typer.Option(None, "--plan", help="a PlanIn JSON file to run instead of planning"),
        as_json: bool = typer.Option(False, "--json", help="print the final snapshot as JSON"),
    ) -> None:
        """Run one task in this process against the configured models."""
        from compound.cli.common import engine_for, settings_or_exit
        from compound.core.errors import PlanInvalid
        from compound.llm import build_client
        from compound.planner.validate import validate_plan
        from compound.store.tasks import create_task

        settings = settings_or_exit(priced=True)
        try:
            plan_in = None
            if plan is not None:
                plan_in = validate_plan(json.loads(plan.read_text()),
                                        max_subtasks=settings.max_subtasks).model_dump(mode="json")
        except PlanInvalid as exc:
            typer.echo("error: the plan is invalid:\n" + "\n".join(f"  - {e}" for e in exc.errors), err=True)
            raise typer.Exit(1) from None
        except (OSError, ValueError) as exc:
            typer.echo(f"error: cannot read the plan: {exc}", err=True)
            raise typer.Exit(1) from None
        engine = engine_for(settings)
        task = create_task(engine, prompt=request, budget_usd=budget or settings.default_budget_usd,
                           plan_in=plan_in)
        snap = asyncio.run(_run(settings, engine, build_client(settings), task.id, live=not as_json))
        if as_json:
            typer.echo(json.dumps(snap, indent=2))
        else:
            from rich.console import Console

            from compound.cli.live import cost_table

            console = Console()
            console.print(cost_table(snap))
            if snap.get("error"):
                console.print(f"[yellow]{snap['error']}[/yellow]")
            console.print(snap.get("result") or "")
        raise typer.Exit(0 if snap["status"] == "completed" else 1)


async def _run(settings, engine, client, task_id: str, *, live: bool):  # type: ignore[no-untyped-def]
    from compound.executor.service import Executor
    from compound.store.models import TERMINAL_TASK
    from compound.store.tasks import task_snapshot

    executor = Executor(settings=settings, engine=engine, client=client)
    executor.submit(task_id)
    if live:
        from rich.live import Live

        from compound.cli.live import render_snapshot

        with Live(render_snapshot(task_snapshot(engine, task_id)), refresh_per_second=8) as view:
            while task_snapshot(engine, task_id)["status"] not in TERMINAL_TASK:
                await asyncio.sleep(0.2)
                view.update(render_snapshot(task_snapshot(engine, task_id)))
            view.update(render_snapshot(task_snapshot(engine, task_id)))
    await executor.wait(task_id)
    await executor.stop()
    return task_snapshot(engine, task_id)
