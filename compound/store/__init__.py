"""The store: the RunStore seam (base.py) and one implementation per database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compound.store.base import RunStore

if TYPE_CHECKING:
    from compound.core.settings import Settings


def open_store(url: str, **options: Any) -> RunStore:
    """The RunStore for this URL (not opened yet: `await store.open()`, or use it as an
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
