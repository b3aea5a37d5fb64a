"""The `compound` command. Each sub-module registers its own commands."""

from __future__ import annotations

import os

# litellm must read its bundled price map and stay quiet offline; set before any import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

import typer

app = typer.Typer(
    name="compound",
    help="Turn one request into a DAG of tiered subtasks and run it fast, cheap, under budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _logs_to_stderr() -> None:
    """Every command logs to stderr, never into stdout (`--json` output, `compound mcp`'s
    stdio stream). `serve`, `worker` and `run` reconfigure with their settings' level."""
    from compound.core.logging import configure_logging

    configure_logging(os.environ.get("COMPOUND_LOG_LEVEL", "INFO"))


def _register() -> None:
    from compound.cli import config, db, eval, mcp, plan, run, serve, sim, tasks, tokens, tools, worker

    for module in (config, db, eval, mcp, plan, run, serve, sim, tasks, tokens, tools, worker):
        module.register(app)


def main() -> None:
    _register()
    app()
