"""Bearer-token authentication: every route but /healthz needs a token; scopes
submit / read / admin; a user sees only their own tasks unless admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compound.api.errors import ApiError
from compound.store.base import Principal, RunStore
from compound.store.sqlrun import hash_token

__all__ = ["AdminPrincipal", "Principal", "ReadPrincipal", "SubmitPrincipal", "hash_token"]

bearer = HTTPBearer(auto_error=False, description="a token from `compound tokens create`")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def principal_from(request: Request, token: str | None) -> Principal:
    if not token:
        raise ApiError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'",
                       CHALLENGE)
    store: RunStore = request.app.state.store
    principal = await store.principal_for_token(token)
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token", CHALLENGE)
    return principal


def _need(scope: str):  # type: ignore[no-untyped-def]
    async def dep(request: Request,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        principal = await principal_from(request, creds.credentials if creds else None)
        if scope not in principal.scopes and not principal.is_admin:
            raise ApiError(403, "forbidden", f"this token lacks the '{scope}' scope")
        return principal

    return dep


ReadPrincipal = Annotated[Principal, Depends(_need("read"))]
SubmitPrincipal = Annotated[Principal, Depends(_need("submit"))]
AdminPrincipal = Annotated[Principal, Depends(_need("admin"))]


def owner_filter(principal: Principal) -> str | None:
    """The user id to filter tasks by; None for an admin (sees all)."""
    return None if principal.is_admin else principal.user_id
