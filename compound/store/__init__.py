"""The store: the RunStore seam (base.py) and one implementation per database."""

from __future__ import annotations

from typing import Any

from compound.store.base import RunStore


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
