"""The store: the RunStore seam (base.py), the UserStore and TokenAdmin seams
(users.py), and one implementation of all three per database (Store)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compound.store.base import RunStore
from compound.store.users import TokenAdmin, UserStore

if TYPE_CHECKING:
    from compound.core.settings import Settings


class Store(RunStore, UserStore, TokenAdmin):
    """A database's store: a task's life (RunStore), its users and tokens as requests
    need them (UserStore) and as an operator manages them (TokenAdmin). Code that
    needs only one of them is typed against that one."""


def open_store(url: str, **options: Any) -> Store:
    """The store for this URL (not opened yet: `await store.open()`, or use it as an
    async context manager). sqlite:/// → SqliteRunStore; postgresql:// → PostgresRunStore."""
    if url.startswith("sqlite"):
        from compound.store.sqlite import SqliteRunStore

        return SqliteRunStore(url, **options)
    if url.startswith(("postgresql", "postgres://")):
        from compound.store.postgres import PostgresRunStore

        return PostgresRunStore(url, **options)
    from compound.core.errors import ConfigError

    raise ConfigError(f"COMPOUND_DATABASE_URL: no store for {url.split(':', 1)[0]!r}; "
                      "use sqlite:///path or postgresql://...")


def store_options(settings: Settings) -> dict[str, Any]:
    """open_store's options from the settings (per database)."""
    if settings.database_url.startswith("sqlite"):
        return {"synchronous": settings.sqlite_synchronous}
    return {}
