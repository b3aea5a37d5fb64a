"""Engines and sessions. SQLite runs in WAL mode with a busy timeout; PostgreSQL by URL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlmodel import SQLModel, create_engine

from compound.core.errors import CompoundError, ConfigError
from compound.store import models  # noqa: F401  (registers the tables)


class StoreUnavailable(CompoundError):
    """The store at the configured URL cannot be opened (the message says why)."""

    code = "store_unavailable"


def normalise_url(url: str) -> str:
    """The SQLAlchemy URL for `url`: postgres:// and postgresql:// use psycopg 3."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def make_engine(url: str, *, sqlite_synchronous: str = "NORMAL") -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=False
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except ImportError as exc:
        from compound.core.extras import install_hint

        raise ConfigError(f"COMPOUND_DATABASE_URL is PostgreSQL but its driver is missing ({exc.name or exc}): "
                          f"{install_hint('postgres')}") from None


def create_all(engine: Engine) -> None:
    """Create the tables directly (tests and benchmarks); services run migrations."""
    SQLModel.metadata.create_all(engine)


def admin_engine(url: str, *, sqlite_synchronous: str = "NORMAL") -> Engine:
    """An engine for admin commands, tables created; StoreUnavailable when it cannot
    be opened (a bad URL, a missing driver, no server)."""
    try:
        engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
        create_all(engine)
    except (ArgumentError, NoSuchModuleError, OperationalError, ValueError) as exc:
        raise StoreUnavailable(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from None
    return engine
