"""`compound config show`: the effective settings, secrets masked."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    config = typer.Typer(help="Settings.", no_args_is_help=True)
    app.add_typer(config, name="config")

    @config.command("show")
    def show() -> None:
        """Print the effective settings (environment, then the TOML file) with secrets masked."""
        from compound.cli.common import settings_or_exit

        typer.echo(json.dumps(settings_or_exit().public_dict(), indent=2, default=str))
