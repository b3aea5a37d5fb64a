"""`compound worker`: run tasks from the DBOS queue (COMPOUND_EXECUTION=queue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def worker() -> None:
        """Take tasks from the queue on PostgreSQL and run them (any number of workers; docs/deploy.md).
        SIGTERM drains: no new task, the running ones may end (COMPOUND_WORKER_DRAIN_S); a second one stops at once."""
        import asyncio
        import signal

        from compound.cli.common import require_extras_or_exit, settings_or_exit
        from compound.core.errors import ConfigError
        from compound.core.logging import configure_logging
        from compound.worker.names import check_queue_settings
        from compound.worker.runner import run_worker

        settings = settings_or_exit(priced=True)
        require_extras_or_exit(settings, queue=True)
        try:
            check_queue_settings(settings)
        except ConfigError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(2) from None
        configure_logging(settings.log_level, settings.log_json)

        async def main() -> None:
            # The first SIGTERM/SIGINT drains (COMPOUND_WORKER_DRAIN_S); a second one
            # stops at once (the tasks left are resumed by another worker).
            stop, hurry = asyncio.Event(), asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: (hurry if stop.is_set() else stop).set())
            await run_worker(settings, stop, hurry)

        typer.echo(f"compound worker (concurrency {settings.worker_concurrency})", err=True)
        asyncio.run(main())
