"""`compound run "request"`: one task in-process with a live tree, then the answer
and a cost table per model and tier."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer

from compound.core.settings import Settings
from compound.llm.base import LLMClient


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
        engine_for(settings).dispose()  # refuse at once, with a message, if the store cannot be opened
        snap = asyncio.run(_run(settings, build_client(settings), request=request,
                                budget=budget or settings.default_budget_usd, plan_in=plan_in, live=not as_json))
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


async def _run(settings: Settings, client: LLMClient, *, request: str, budget: float,
               plan_in: dict[str, Any] | None, live: bool) -> dict[str, Any]:
    from compound.executor.service import Executor
    from compound.store import open_store, store_options

    async with open_store(settings.database_url, **store_options(settings)) as store:
        task = await store.create_task(prompt=request, budget_usd=budget, plan_in=plan_in)
        executor = Executor(settings=settings, store=store, client=client)
        async with store.subscribe(task.id, after=0) as events:
            executor.submit(task.id)
            if live:
                from rich.live import Live

                from compound.cli.live import render_snapshot

                # Redrawn on each committed event; nothing is read while nothing changes.
                with Live(render_snapshot(await store.snapshot(task.id)), refresh_per_second=8) as view:
                    async for ev in events:
                        view.update(render_snapshot(await store.snapshot(task.id)))
                        if ev.terminal:
                            break
        await executor.wait(task.id)
        await executor.stop()
        return await store.snapshot(task.id)
