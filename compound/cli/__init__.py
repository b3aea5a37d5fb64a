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
def _logs_to_stderr(
    verbose: bool = typer.Option(False, "-v", "--verbose", help=(
        "log lines from INFO up on a terminal too (default there: WARNING; COMPOUND_LOG_LEVEL wins)")),
) -> None:
    """Every command logs to stderr, never into stdout (`--json` output, `compound mcp`'s
    stdio stream): on a terminal from WARNING up unless -v, else JSON lines from INFO
    up. `serve`, `worker` and `run` reconfigure with their settings' level."""
    from compound.core.logging import configure_logging, set_verbose

    set_verbose(verbose)
    configure_logging(os.environ.get("COMPOUND_LOG_LEVEL") or None)
    _warn_unknown_variables()


def _warn_unknown_variables() -> None:
    """A misspelled COMPOUND_* variable would be ignored without a word: one warning per
    variable, with the closest name compound reads."""
    from compound.core.logging import get_logger
    from compound.core.settings import unknown_variables

    log = get_logger("compound.cli")
    for name, close in unknown_variables(os.environ):
        hint = f"; did you mean {close}?" if close else ""
        log.warning(f"unknown variable {name} is ignored{hint}", variable=name, closest=close)


def _register() -> None:
    from compound.cli import config, db, eval, mcp, plan, run, serve, sim, tasks, tokens, tools, worker

    for module in (config, db, eval, mcp, plan, run, serve, sim, tasks, tokens, tools, worker):
        module.register(app)


def main() -> None:
    _register()
    app()
