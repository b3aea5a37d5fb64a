"""Bearer-token authentication: every route but /healthz needs a token; scopes
submit / read / admin; a user sees only their own tasks unless admin. Every route and
every door (chat completions, MCP, A2A) asks `authenticate()`, which reads the token
cache: one answer, one cost, one wording for a missing, unknown or revoked token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compound.api.errors import ApiError
from compound.api.state import app_state
from compound.core.logging import get_logger
from compound.store.sqlrun import hash_token
from compound.store.users import UserStore
from compound.store.values import Principal

__all__ = ["AdminPrincipal", "AuthRefused", "Principal", "ReadPrincipal", "SubmitPrincipal", "TokenCache",
           "authenticate", "hash_token"]

bearer = HTTPBearer(auto_error=False, description="a token from `compound tokens create`")
CHALLENGE = {"WWW-Authenticate": "Bearer"}
log = get_logger(__name__)


class TokenCache:
    """Principals by token hash, kept in memory for `ttl_s` (at most 1 s, so a token
    revoked by any process stops working within 1 s), and each token's last use,
    written in one batch every `flush_s` rather than once per request.

    An unknown or revoked hash is remembered too (as None), so a client retrying a
    bad token costs one lookup a second, not one per request. An entry past half its
    life is read again in the background while it still answers, so a busy token's
    requests never wait for the store; requests that miss together share one read.
    An entry's life counts from the moment its read began."""

    def __init__(self, store: UserStore, *, ttl_s: float = 1.0, flush_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self.store, self.ttl_s, self.flush_s = store, ttl_s, flush_s
        self.clock, self.max_entries = clock, max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}  # digest -> (read at, principal)
        self._used: dict[str, datetime] = {}
        self._reads: dict[str, asyncio.Future[Principal | None]] = {}

    def cached(self, digest: str) -> tuple[bool, Principal | None]:
        """(True, principal) for a live entry; (False, None) when it must be looked up."""
        entry = self._entries.get(digest)
        if entry is None:
            return False, None
        if self.clock() - entry[0] >= self.ttl_s:
            del self._entries[digest]
            return False, None
        return True, entry[1]

    def _keep(self, digest: str, principal: Principal | None, read_at: float) -> None:
        if len(self._entries) >= self.max_entries:
            now = self.clock()
            self._entries = {d: e for d, e in self._entries.items() if now - e[0] < self.ttl_s}
            while len(self._entries) >= self.max_entries:  # all live: drop the oldest
                del self._entries[next(iter(self._entries))]
        self._entries[digest] = (read_at, principal)

    def _used_now(self, principal: Principal | None) -> Principal | None:
        if principal is not None:
            self._used[principal.token_id] = datetime.now(UTC)
        return principal

    def _start_read(self, token: str, digest: str) -> asyncio.Future[Principal | None]:
        read = self._reads.get(digest)
        if read is None:
            read = self._reads[digest] = asyncio.ensure_future(self._read(token, digest))
            read.add_done_callback(_consume)
        return read

    async def lookup(self, token: str) -> Principal | None:
        """The token's principal: from memory, or read from the store (off the loop)."""
        digest = hash_token(token)
        hit, principal = self.cached(digest)
        if hit:
            if self.clock() - self._entries[digest][0] >= self.ttl_s / 2:
                self._start_read(token, digest)  # refresh ahead; this request does not wait
        else:
            # shielded: one caller canceled does not cancel the read the others wait for
            principal = await asyncio.shield(self._start_read(token, digest))
        return self._used_now(principal)

    async def _read(self, token: str, digest: str) -> Principal | None:
        try:
            read_at = self.clock()
            principal = await self.store.principal_for_token(token)
            self._keep(digest, principal, read_at)
            return principal
        finally:
            del self._reads[digest]

    def pending(self) -> dict[str, datetime]:
        """Last uses not written yet (token id -> when)."""
        return dict(self._used)

    async def flush(self) -> None:
        """Write the last uses gathered since the previous flush, off the event loop."""
        used, self._used = self._used, {}
        if not used:
            return
        try:  # a batch every flush_s, never per request
            await self.store.record_token_use(used)
        except BaseException:
            for token_id, at in used.items():  # keep them for the next flush
                self._used.setdefault(token_id, at)
            raise

    async def run(self) -> None:
        """Flush every `flush_s` until canceled (the app flushes once more on shutdown)."""
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception as exc:  # the store may be busy: keep serving, try next time
                log.warning("token_last_used_flush_failed", error=type(exc).__name__)


def _consume(read: asyncio.Future[Principal | None]) -> None:
    """A background refresh that failed is retried by the next request; its error is
    not left unretrieved."""
    if not read.cancelled():
        read.exception()


class AuthRefused(Exception):
    """Who is calling could not be told (401) or may not do this (403). The routes
    answer it as an ApiError; each door in its own protocol's shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def api_error(self) -> ApiError:
        if self.status == 401:
            return ApiError(401, "unauthorized", self.message, CHALLENGE)
        return ApiError(self.status, "forbidden", self.message)


MISSING = "missing bearer token: send 'Authorization: Bearer <token>'"
REFUSED = "invalid or revoked token"


def require_scope(principal: Principal, scope: str) -> Principal:
    """The principal, if its token has `scope` (admin has all); AuthRefused(403) if not."""
    if scope not in principal.scopes and not principal.is_admin:
        raise AuthRefused(403, f"this token lacks the '{scope}' scope")
    return principal


async def authenticate(tokens: TokenCache, token: str | None, scope: str | None = None) -> Principal:
    """The caller's principal, from the token cache, if the token is live (and has
    `scope`, when one is named); AuthRefused otherwise."""
    if not token:
        raise AuthRefused(401, MISSING)
    principal = await tokens.lookup(token)
    if principal is None:
        raise AuthRefused(401, REFUSED)
    return principal if scope is None else require_scope(principal, scope)


async def principal_from(request: Request, token: str | None) -> Principal:
    try:
        return await authenticate(app_state(request.app).tokens, token)
    except AuthRefused as exc:
        raise exc.api_error() from None


async def authorize(request: Request, token: str | None, scope: str) -> Principal:
    """The caller's principal if the token is live and has `scope` (admin has all)."""
    try:
        return await authenticate(app_state(request.app).tokens, token, scope)
    except AuthRefused as exc:
        raise exc.api_error() from None


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer ...` header, as HTTPBearer reads it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# For a route that skips FastAPI's dependency solver (its hot read path): the same
# security requirement, documented by hand.
BEARER_SECURITY: list[dict[str, list[str]]] = [{"HTTPBearer": []}]


def _need(scope: str):  # type: ignore[no-untyped-def]
    async def dep(request: Request,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        return await authorize(request, creds.credentials if creds else None, scope)

    return dep


ReadPrincipal = Annotated[Principal, Depends(_need("read"))]
SubmitPrincipal = Annotated[Principal, Depends(_need("submit"))]
AdminPrincipal = Annotated[Principal, Depends(_need("admin"))]


def owner_filter(principal: Principal) -> str | None:
    """The user id to filter tasks by; None for an admin (sees all)."""
    return None if principal.is_admin else principal.user_id
