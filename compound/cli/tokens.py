"""`compound tokens create | list | revoke`: bearer tokens, stored only as hashes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from compound.store.users import TokenAdmin


def _users() -> TokenAdmin:
    """The users and tokens of the configured database (tables created)."""
    from compound.cli.common import engine_for, settings_or_exit
    from compound.store.users import AdminUsers

    return AdminUsers(engine_for(settings_or_exit()))


def register(app: typer.Typer) -> None:
    tokens = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
    app.add_typer(tokens, name="tokens")

    @tokens.command("create")
    def create(
        user: str = typer.Option(..., "--user", help="the token's user (created if new)"),
        scope: list[str] = typer.Option(None, "--scope", help="submit, read or admin (repeatable or comma-separated)"),
    ) -> None:
        """Print a new token on stdout (only the token; it is not shown again)."""
        from compound.core.errors import UserInputError

        scopes = [s.strip() for item in (scope or []) for s in item.split(",") if s.strip()] or None
        users = _users()
        try:
            row, token = users.create_token(user, scopes)
        except UserInputError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"created token {row.id} for {user} with scopes {row.scopes}", err=True)
        typer.echo(token)

    @tokens.command("list")
    def list_() -> None:
        """Tokens with their user, scopes and dates (never the token or its hash)."""
        from rich.console import Console
        from rich.table import Table

        from compound.store.ops import iso

        table = Table("id", "user", "scopes", "created", "last used", "revoked")
        for row, name in _users().list_tokens():
            table.add_row(row.id, name, row.scopes, iso(row.created_at) or "", iso(row.last_used_at) or "",
                          iso(row.revoked_at) or "")
        Console().print(table)

    @tokens.command("revoke")
    def revoke(token_id: str = typer.Argument(..., help="the token's id (from `tokens list`)")) -> None:
        """Revoke a token: it stops working at once."""
        from compound.core.errors import NotFound

        users = _users()
        try:
            users.revoke_token(token_id)
        except NotFound as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"revoked {token_id}", err=True)
