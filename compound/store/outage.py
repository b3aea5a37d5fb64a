"""Which database errors mean "the database is not there right now": a table of the
drivers' connection-level errors (psycopg, its pool, SQLAlchemy), turned into one
DatabaseUnavailable. Everything else (a constraint, a bad statement, a deadlock) is
not an outage and stays what it is."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from compound.core.errors import DatabaseUnavailable

# SQLSTATE classes and codes of a server that is going away or will not take us:
# 08 connection exception, 57P01 admin shutdown (pg_terminate_backend, a restart),
# 57P02 crash shutdown, 57P03 cannot connect now (starting up), 53300 too many
# connections.
UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def _psycopg_unavailable(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the postgres extra is not installed
        return False
    if not isinstance(exc, psycopg.OperationalError):
        return False
    # No SQLSTATE: the client's own failure to connect, to read or to use a closed
    # connection (a pool timeout, "server closed the connection unexpectedly").
    state = exc.sqlstate
    return state is None or state.startswith(UNAVAILABLE_SQLSTATES)


def _sqlalchemy_unavailable(exc: BaseException) -> bool:
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.TimeoutError):  # no pooled connection came in time
        return True
    if isinstance(exc, sa.DBAPIError):
        return bool(exc.connection_invalidated) or (exc.orig is not None and is_unavailable(exc.orig))
    return False


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the database went away."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DatabaseUnavailable) or _psycopg_unavailable(cur) or _sqlalchemy_unavailable(cur):
            return True
        cur = cur.__cause__  # what it was raised from, explicitly (not what it interrupted)
    return False


def unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """The DatabaseUnavailable that `exc` amounts to, or None when it is no outage. The
    message names only the error's class: a driver's text may hold the server's
    address or a user name."""
    if isinstance(exc, DatabaseUnavailable):
        return exc
    if not is_unavailable(exc):
        return None
    return DatabaseUnavailable(type(getattr(exc, "orig", None) or exc).__name__)


@contextmanager
def outage_as_error() -> Iterator[None]:
    """Raise DatabaseUnavailable in place of a driver's connection-level error."""
    try:
        yield
    except Exception as exc:
        err = unavailable(exc)
        if err is None or err is exc:
            raise
        raise err from exc
