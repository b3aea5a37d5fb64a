"""Users and API tokens (admin commands, synchronous). A token is shown once; only its
sha256 is stored. Requests authenticate through RunStore.principal_for_token."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import bindparam, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from compound.core.errors import NotFound, UserInputError
from compound.store.models import ApiToken, User, utcnow
from compound.store.outage import outage_as_error
from compound.store.sqlrun import hash_token

__all__ = ["SCOPES", "create_token", "get_or_create_user", "hash_token", "list_tokens", "lookup_token",
           "record_last_used", "revoke_token"]

SCOPES = ("submit", "read", "admin")
TOKEN_PREFIX = "cpd_"


def get_or_create_user(engine: Engine, name: str) -> User:
    name = name.strip()
    if not name or len(name) > 200:
        raise UserInputError("a user name needs 1 to 200 characters")
    with outage_as_error(), Session(engine, expire_on_commit=False) as s:
        user = s.exec(select(User).where(User.name == name)).first()
        if user is None:
            user = User(name=name)
            s.add(user)
            s.commit()
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
    with Session(engine, expire_on_commit=False) as s:
        s.add(row)
        s.commit()
    return row, token


def list_tokens(engine: Engine) -> list[tuple[ApiToken, str]]:
    with Session(engine, expire_on_commit=False) as s:
        rows = s.exec(select(ApiToken, User.name).join(User, col(User.id) == col(ApiToken.user_id))
                      .order_by(col(ApiToken.created_at))).all()
        return [(t, n) for t, n in rows]


def revoke_token(engine: Engine, token_id: str) -> ApiToken:
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise NotFound(f"no token with id {token_id!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            s.add(row)
            s.commit()
        return row


def lookup_token(engine: Engine, token: str) -> str | None:
    """The user id of a live (not revoked) token, else None (`compound run`'s owner)."""
    with Session(engine, expire_on_commit=False) as s:
        row = s.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
        if row is None or row.revoked_at is not None:
            return None
        return row.user_id


def record_last_used(engine: Engine, used: dict[str, datetime]) -> None:
    """Write each token's last use (token id -> when) in one transaction; a later time
    already stored (by another process) is kept."""
    if not used:
        return
    t = ApiToken.__table__  # type: ignore[attr-defined]
    stmt = (update(t).where(t.c.id == bindparam("tid"))
            .where(or_(t.c.last_used_at.is_(None), t.c.last_used_at < bindparam("at")))
            .values(last_used_at=bindparam("at")))
    with outage_as_error(), engine.begin() as conn:
        conn.execute(stmt, [{"tid": tid, "at": at} for tid, at in used.items()])
