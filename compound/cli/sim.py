"""`compound sim`: the offline provider simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def script_for(*, latency: float | None, latency_ms: int, data: dict[str, Any]) -> Any:
    """The simulator's script: the JSON file, then --latency (seconds) or --latency-ms."""
    from compound.simulator import Script

    plan = Script.from_json(data)
    if latency is not None:
        plan.latency_s = latency
    elif latency_ms:
        plan.latency_s = latency_ms / 1000
    return plan


def register(app: typer.Typer) -> None:
    @app.command()
    def sim(
        host: str = typer.Option("127.0.0.1", help="interface to listen on"),
        port: int = typer.Option(8787, help="port to listen on"),
        latency: float | None = typer.Option(None, min=0.0, help="seconds added to every answer (e.g. 1.5)"),
        latency_ms: int = typer.Option(0, min=0, help="the same in milliseconds"),
        script: Path | None = typer.Option(None, help="JSON script: latency_s, latency_rules, failures, answers"),
    ) -> None:
        """Run the offline provider simulator (Anthropic Messages + OpenAI Chat Completions)."""
        from compound.simulator import run_simulator

        data = json.loads(script.read_text()) if script else {}
        plan = script_for(latency=latency, latency_ms=latency_ms, data=data)
        base = f"http://{host}:{port}"
        typer.echo(f"compound provider simulator on {base} (latency {plan.latency_s:g} s)", err=True)
        typer.echo("point compound at it with:", err=True)
        typer.echo(f"  export ANTHROPIC_BASE_URL={base} ANTHROPIC_API_KEY=sim", err=True)
        typer.echo(f"  export OPENAI_BASE_URL={base}/v1 OPENAI_API_KEY=sim", err=True)
        run_simulator(host, port, plan)
