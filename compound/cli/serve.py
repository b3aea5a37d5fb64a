"""`compound serve`: the API, the dashboard and the in-process executor."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="interface to listen on"),
        port: int = typer.Option(8000, help="port to listen on"),
    ) -> None:
        """Run the HTTP API (with the dashboard and the executor) on SQLite by default."""
        import uvicorn

        from compound.api.app import create_app
        from compound.cli.common import engine_for, require_extras_or_exit, settings_or_exit

        settings = settings_or_exit(priced=True)
        require_extras_or_exit(settings, queue=True)
        if settings.execution == "queue":
            from compound.core.errors import ConfigError
            from compound.worker.names import check_queue_settings

            try:
                check_queue_settings(settings)
            except ConfigError as exc:
                typer.echo(f"error: {exc.message}", err=True)
                raise typer.Exit(2) from None
        engine_for(settings).dispose()  # refuse at once, with a message, if the store cannot be opened
        store = settings.public_dict()["database_url"]
        typer.echo(f"compound serving on http://{host}:{port} (store: {store}, execution: {settings.execution})",
                   err=True)
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
