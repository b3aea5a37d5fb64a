"""`compound db upgrade`: apply the Alembic migrations to COMPOUND_DATABASE_URL."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    db = typer.Typer(help="The store's schema.", no_args_is_help=True)
    app.add_typer(db, name="db")

    @db.command("upgrade")
    def upgrade(revision: str = typer.Argument("head")) -> None:
        """Migrate the store to `revision` (default: the latest)."""
        from compound.cli.common import require_extras_or_exit, settings_or_exit
        from compound.core.settings import mask_url
        from compound.store.migrate import upgrade as run

        settings = settings_or_exit()
        require_extras_or_exit(settings)
        run(settings.database_url, revision)
        typer.echo(f"{mask_url(settings.database_url)} is at {revision}", err=True)
