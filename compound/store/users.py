"""Users and API tokens. A token is shown once; only its sha256 is stored.

Two small interfaces, nothing of a task's life in either: UserStore, what a request
needs (authentication in api/auth.py, the doors; coroutines), and TokenAdmin, what the
`compound tokens` commands need (synchronous: they run no event loop). Both stores
provide both (store.Store); AdminUsers provides both over a bare engine (the CLI). The
module's functions are the synchronous operations behind them."""

from __future__ import annotations

import abc
import asyncio
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, bindparam, insert, or_, select, update
from sqlalchemy.engine import Engine

from compound.core.errors import NotFound, UserInputError
from compound.store.models import ApiToken, User, utcnow
from compound.store.outage import outage_as_error
from compound.store.sqlrun import check_token, hash_token
from compound.store.statements import TOKEN_LOOKUP
from compound.store.values import Principal

__all__ = ["SCOPES", "AdminUsers", "EngineUsers", "TokenAdmin", "UserStore", "create_token", "get_or_create_user",
           "hash_token", "list_tokens", "lookup_token", "principal_for", "record_last_used", "revoke_token"]

SCOPES = ("submit", "read", "admin")
TOKEN_PREFIX = "cpd_"
U: Table = User.__table__  # type: ignore[attr-defined]
K: Table = ApiToken.__table__  # type: ignore[attr-defined]


def _token(row: Row[Any]) -> ApiToken:
    """An api_token row (selected with its columns first) as the model."""
    return ApiToken(**{c.name: row._mapping[c] for c in K.c})


def get_or_create_user(engine: Engine, name: str) -> User:
    name = name.strip()
    if not name or len(name) > 200:
        raise UserInputError("a user name needs 1 to 200 characters")
    with outage_as_error(), engine.begin() as conn:
        row = conn.execute(select(U).where(U.c.name == name)).first()
        if row is not None:
            return User(**row._mapping)
        user = User(name=name)
        conn.execute(insert(U).values(user.model_dump()))
        return user


def create_token(engine: Engine, user_name: str, scopes: list[str] | None = None) -> tuple[ApiToken, str]:
    """A new random token (256 bits) for the user (created if new). Returns the row
    and the token itself, which is never stored."""
    wanted = sorted(set(scopes or ["submit", "read"]))
    bad = [s for s in wanted if s not in SCOPES]
    if bad:
        raise UserInputError(f"unknown scope(s) {', '.join(bad)}; choose from {', '.join(SCOPES)}")
    user = get_or_create_user(engine, user_name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, token_hash=hash_token(token), scopes=",".join(wanted))
    with engine.begin() as conn:
        conn.execute(insert(K).values(row.model_dump()))
    return row, token


def list_tokens(engine: Engine) -> list[tuple[ApiToken, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(K, U.c.name).join_from(K, U, U.c.id == K.c.user_id).order_by(K.c.created_at))
        return [(_token(r), r._mapping[U.c.name]) for r in rows]


def revoke_token(engine: Engine, token_id: str) -> ApiToken:
    with engine.begin() as conn:
        row = conn.execute(select(K).where(K.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"no token with id {token_id!r}")
        token = _token(row)
        if token.revoked_at is None:
            token.revoked_at = utcnow()
            conn.execute(update(K).where(K.c.id == token_id).values(revoked_at=token.revoked_at))
        return token


def lookup_token(engine: Engine, token: str) -> str | None:
    """The user id of a live (not revoked) token, else None (`compound run`'s owner)."""
    with engine.connect() as conn:
        row = conn.execute(select(K.c.user_id, K.c.revoked_at).where(K.c.token_hash == hash_token(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    return str(row.user_id)


def record_last_used(engine: Engine, used: dict[str, datetime]) -> None:
    """Write each token's last use (token id -> when) in one transaction; a later time
    already stored (by another process) is kept."""
    if not used:
        return
    stmt = (update(K).where(K.c.id == bindparam("tid"))
            .where(or_(K.c.last_used_at.is_(None), K.c.last_used_at < bindparam("at")))
            .values(last_used_at=bindparam("at")))
    with outage_as_error(), engine.begin() as conn:
        conn.execute(stmt, [{"tid": tid, "at": at} for tid, at in used.items()])


def principal_for(engine: Engine, token: str) -> Principal | None:
    """The principal of a live (not revoked) token, else None: the statement the
    stores' own token lookup runs (statements.py TOKEN), on the engine."""
    with outage_as_error(), engine.connect() as conn:
        found = conn.execute(TOKEN_LOOKUP, {"h": hash_token(token)}).first()
    if found is None or found.revoked_at is not None:
        return None
    token_id, user_id, stored, scopes, _, name = found
    return check_token(token, (stored, Principal(
        user_id=user_id, user_name=name, scopes=frozenset(x for x in scopes.split(",") if x), token_id=token_id)))


class UserStore(abc.ABC):
    """Users and tokens as a request needs them. Every method is a coroutine that never
    blocks the event loop."""

    @abc.abstractmethod
    async def principal_for_token(self, token: str) -> Principal | None:
        """The principal of a live (unrevoked) token, or None."""

    @abc.abstractmethod
    async def record_token_use(self, used: dict[str, datetime]) -> None:
        """Write each token's last use (token id -> when) at once; a later time already
        stored is kept."""

    @abc.abstractmethod
    async def user_named(self, name: str) -> User:
        """The user of this name, created if new (UserInputError for a bad name)."""


class TokenAdmin(abc.ABC):
    """Tokens as an operator manages them. Synchronous; the token itself is returned
    once, on creation, and never stored."""

    @abc.abstractmethod
    def create_token(self, user_name: str, scopes: list[str] | None = None) -> tuple[ApiToken, str]:
        """A new token for the user (created if new): the row and the token.
        UserInputError for a bad user name or scope."""

    @abc.abstractmethod
    def list_tokens(self) -> list[tuple[ApiToken, str]]:
        """Every token with its user's name, oldest first."""

    @abc.abstractmethod
    def revoke_token(self, token_id: str) -> ApiToken:
        """Revoke a token (again changes nothing); NotFound for an unknown id."""

    @abc.abstractmethod
    def token_user_id(self, token: str) -> str | None:
        """The user id of a live token, else None."""


class EngineUsers(UserStore, TokenAdmin):
    """Both interfaces over a synchronous SQLAlchemy engine; a request's calls each on
    a worker thread."""

    @property
    @abc.abstractmethod
    def engine(self) -> Engine: ...

    async def principal_for_token(self, token: str) -> Principal | None:
        return await asyncio.to_thread(principal_for, self.engine, token)

    async def record_token_use(self, used: dict[str, datetime]) -> None:
        await asyncio.to_thread(record_last_used, self.engine, used)

    async def user_named(self, name: str) -> User:
        return await asyncio.to_thread(get_or_create_user, self.engine, name)

    def create_token(self, user_name: str, scopes: list[str] | None = None) -> tuple[ApiToken, str]:
        return create_token(self.engine, user_name, scopes)

    def list_tokens(self) -> list[tuple[ApiToken, str]]:
        return list_tokens(self.engine)

    def revoke_token(self, token_id: str) -> ApiToken:
        return revoke_token(self.engine, token_id)

    def token_user_id(self, token: str) -> str | None:
        return lookup_token(self.engine, token)


class AdminUsers(EngineUsers):
    """The users and tokens of a database, without a RunStore (the CLI's admin commands)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine
