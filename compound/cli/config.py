"""`compound config show`: the effective settings, secrets masked, and which adapter
serves each configured model."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    config = typer.Typer(help="Settings.", no_args_is_help=True)
    app.add_typer(config, name="config")

    @config.command("show")
    def show() -> None:
        """Print the effective settings (environment, then the TOML file) with secrets masked,
        and the adapter serving each model (anthropic SDK, openai SDK, or litellm)."""
        from compound.cli.common import settings_or_exit
        from compound.llm.registry import adapter_table

        settings = settings_or_exit()
        data = settings.public_dict()
        data["adapters"] = adapter_table(settings)
        typer.echo(json.dumps(data, indent=2, default=str))
