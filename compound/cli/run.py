"""`compound run "request"`: one task in-process with a live tree, then the answer
and a cost table per model and tier. Ctrl-C cancels the task (in-flight calls are
stopped); a second Ctrl-C exits at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from compound.core.settings import Settings
from compound.llm.base import LLMClient

LOCAL_USER = "local"


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        request: str | None = typer.Argument(None, help="what you want done (`-`: read it from stdin)"),
        file: Path | None = typer.Option(None, "--file", "-f", help=(
            "read the request from this file (`-`: stdin); or give `-` as the request")),
        budget: float | None = typer.Option(None, "--budget", help="hard cap in USD (more than 0)"),
        plan: Path | None = typer.Option(None, "--plan", help="a PlanIn JSON file to run instead of planning"),
        user: str | None = typer.Option(None, "--user", envvar="COMPOUND_USER", help=(
            "the task's owner; default: the user of COMPOUND_TOKEN, else 'local'")),
        as_json: bool = typer.Option(False, "--json", help="print the final snapshot as JSON"),
    ) -> None:
        """Run one task in this process against the configured models."""
        from compound.cli.common import engine_for, read_prompt, settings_or_exit
        from compound.llm import build_client

        if budget is not None and budget <= 0:
            typer.echo("error: --budget must be more than 0 (it is a hard cap in USD)", err=True)
            raise typer.Exit(2)
        settings = settings_or_exit(priced=True)
        prompt = read_prompt(request, file, settings.max_prompt_chars)
        from compound.core.logging import configure_logging

        configure_logging(settings.log_level, settings.log_json)  # task logs go to stderr, never stdout
        plan_in = None if plan is None else _read_plan(plan, settings)
        engine = engine_for(settings)  # refuse at once, with a message, if the store cannot be opened
        try:
            owner = owner_id(engine, user)
        finally:
            engine.dispose()
        snap, interrupted = asyncio.run(_run(
            settings, build_client(settings), request=prompt,
            budget=budget if budget is not None else settings.default_budget_usd, plan_in=plan_in, owner=owner,
            live=not as_json))
        _print_end(snap, as_json=as_json)
        if interrupted:
            raise typer.Exit(130)
        raise typer.Exit(0 if snap["status"] == "completed" else 1)


def _read_plan(plan: Path, settings: Settings) -> dict[str, Any]:
    """The --plan file's plan, validated (with the plugins' step kinds); exits with
    the problems when it cannot be read or is invalid."""
    from compound.core.errors import PlanInvalid
    from compound.planner.validate import validate_plan

    try:
        from compound.plugins import load_plugins

        return validate_plan(json.loads(plan.read_text()), max_subtasks=settings.max_subtasks,
                             kinds=load_plugins(settings.plugins).kinds()).model_dump(mode="json")
    except PlanInvalid as exc:
        typer.echo("error: the plan is invalid:\n" + "\n".join(f"  - {e}" for e in exc.errors), err=True)
        raise typer.Exit(1) from None
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot read the plan: {exc}", err=True)
        raise typer.Exit(1) from None


def _print_end(snap: dict[str, Any], *, as_json: bool) -> None:
    """The final snapshot as JSON, or its cost table, outcome and answer."""
    if as_json:
        typer.echo(json.dumps(snap, indent=2))
        return
    from rich.console import Console

    from compound.cli.live import cost_table
    from compound.cli.output import print_answer, print_outcome

    console = Console()
    console.print(cost_table(snap))
    print_outcome(console, snap)
    print_answer(console, snap.get("result"))


def owner_id(engine: Any, name: str | None) -> str:
    """Who a `compound run` task belongs to: --user (or COMPOUND_USER), else the user of
    COMPOUND_TOKEN when it is a live token of this store, else the user 'local'."""
    from compound.cli.common import token_from_env
    from compound.store.users import get_or_create_user, lookup_token

    if name is None and os.environ.get("COMPOUND_TOKEN", "").strip():
        user_id = lookup_token(engine, token_from_env())
        if user_id is not None:
            return user_id
    return get_or_create_user(engine, name or LOCAL_USER).id


async def _run(settings: Settings, client: LLMClient, *, request: str, budget: float,
               plan_in: dict[str, Any] | None, owner: str, live: bool) -> tuple[dict[str, Any], bool]:
    from compound.core.errors import Conflict
    from compound.executor.service import Executor
    from compound.store import open_store, store_options

    async with open_store(settings.database_url, **store_options(settings)) as store:
        task = await store.create_task(prompt=request, budget_usd=budget, plan_in=plan_in, user_id=owner)
        typer.echo(f"task {task.id}", err=True)
        executor = Executor(settings=settings, store=store, client=client)
        await executor.open_tools()
        loop = asyncio.get_running_loop()
        interrupts: list[asyncio.Task[None]] = []

        async def cancel() -> None:
            with contextlib.suppress(Conflict):  # it ended meanwhile
                await executor.cancel(task.id)

        def on_sigint() -> None:
            if interrupts:  # the second Ctrl-C: leave now
                os._exit(130)
            sys.stderr.write("\ncanceling the task (in-flight calls are stopped); Ctrl-C again to exit at once\n")
            sys.stderr.flush()
            interrupts.append(loop.create_task(cancel()))

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            from rich.console import Console

            from compound.cli.live import render_snapshot

            async with store.subscribe(task.id, after=0) as events:
                executor.submit(task.id)
                if live and Console().is_terminal:  # piped: no redraws, the final tree once
                    from rich.live import Live

                    # Redrawn on each committed event; nothing is read while nothing changes.
                    with Live(render_snapshot(await store.snapshot(task.id)), refresh_per_second=8,
                              redirect_stderr=sys.stderr.isatty()) as view:
                        async for ev in events:
                            view.update(render_snapshot(await store.snapshot(task.id)))
                            if ev.terminal:
                                break
            await executor.wait(task.id)
            if live and not Console().is_terminal:
                Console().print(render_snapshot(await store.snapshot(task.id)))
            if interrupts:
                await asyncio.gather(*interrupts)
            await executor.stop()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await client.aclose()  # the SDKs' HTTP sessions close on the loop they ran on
        return await store.snapshot(task.id), bool(interrupts)
