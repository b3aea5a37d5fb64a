"""`compound sim`: the offline provider simulator."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def sim(
        host: str = typer.Option("127.0.0.1", help="interface to listen on"),
        port: int = typer.Option(8787, help="port to listen on"),
        latency_ms: int = typer.Option(0, help="latency added to every answer"),
        script: Path | None = typer.Option(None, help="JSON script: latency_s, failures, answers"),
    ) -> None:
        """Run the offline provider simulator (Anthropic Messages + OpenAI Chat Completions)."""
        from compound.llm.simulator import Script, run_simulator

        data = json.loads(script.read_text()) if script else {}
        plan = Script.from_json(data)
        if latency_ms:
            plan.latency_s = latency_ms / 1000
        base = f"http://{host}:{port}"
        typer.echo(f"compound provider simulator on {base}", err=True)
        typer.echo("point compound at it with:", err=True)
        typer.echo(f"  export ANTHROPIC_BASE_URL={base} ANTHROPIC_API_KEY=sim", err=True)
        typer.echo(f"  export OPENAI_BASE_URL={base}/v1 OPENAI_API_KEY=sim", err=True)
        run_simulator(host, port, plan)
