"""`compound mcp`: compound's MCP tools over stdio for desktop hosts, in-process on the
local store or talking to a running server by URL and token."""

from __future__ import annotations

import os
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def mcp(
        url: str | None = typer.Option(None, help="a running compound server (token from COMPOUND_TOKEN); "
                                       "without it, tasks run in this process on the local store"),
    ) -> None:
        """Serve the MCP tools (submit_task, get_task, ...) over stdio."""
        import anyio

        from compound.cli.common import token_from_env

        token = token_from_env() if os.environ.get("COMPOUND_TOKEN", "").strip() else None
        if url:
            if not token:
                typer.echo("error: --url needs COMPOUND_TOKEN set to a token from `compound tokens create`", err=True)
                raise typer.Exit(2)
            anyio.run(_remote, url, token)
            return
        from compound.cli.common import engine_for, settings_or_exit

        settings = settings_or_exit(priced=True)
        engine_for(settings).dispose()  # refuse at once, with a message, if the store cannot be opened
        anyio.run(_local, settings, token)


async def _remote(url: str, token: str) -> None:
    from compound.api.doors.mcp import RemoteTasks, build_server

    tasks = RemoteTasks(url, token)
    try:
        await build_server(lambda _ctx: tasks).run_stdio_async()
    finally:
        await tasks.aclose()


async def _local(settings: Any, token: str | None) -> None:
    from compound.api.app import create_app
    from compound.api.doors.engine import Door, DoorAuthError
    from compound.api.doors.mcp import LocalTasks, build_server
    from compound.api.state import app_state

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        door = Door(app_state(app))
        try:
            principal = await door.authenticate(token) if token else await door.local_principal()
        except DoorAuthError as exc:
            typer.echo(f"error: COMPOUND_TOKEN: {exc.message}", err=True)
            raise typer.Exit(2) from None
        tasks = LocalTasks(door, principal)
        await build_server(lambda _ctx: tasks).run_stdio_async()
