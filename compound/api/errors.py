"""The one place that maps compound's errors to HTTP: JSON {"error": {"code",
"message"}} with the right status, never a stack trace, never a secret."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compound.core.errors import (
    BudgetExceeded,
    CompoundError,
    ConfigError,
    Conflict,
    DatabaseUnavailable,
    ExecutorUnavailable,
    NotFound,
    PlanInvalid,
    ProviderError,
    UserInputError,
)
from compound.core.logging import get_logger
from compound.core.secrets import redact as redact_text
from compound.store.outage import unavailable

log = get_logger("compound.api")

STATUS = [
    (PlanInvalid, 422),
    (UserInputError, 422),
    (NotFound, 404),
    (Conflict, 409),
    (BudgetExceeded, 402),
    (DatabaseUnavailable, 503),
    (ExecutorUnavailable, 503),
    (ProviderError, 502),
    (ConfigError, 500),
]
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
              415: "unsupported_media_type", 422: "invalid_request", 429: "rate_limited"}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Documented on every authenticated route.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _err("missing, invalid or revoked token"),
    403: _err("the token lacks the scope this needs"),
    404: _err("no such task, or not yours"),
    413: _err("request body too large"),
    422: _err("a field, the query or the body is invalid; the message names it"),
    503: _err("the database is unavailable for now (`database_unavailable`); retry after `Retry-After` seconds"),
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": redact_text(message), **extra}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_r: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)

    @app.exception_handler(CompoundError)
    async def _compound(_r: Request, exc: CompoundError) -> JSONResponse:
        status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
        extra: dict[str, Any] = {}
        if isinstance(exc, PlanInvalid):
            extra["errors"] = exc.errors
        if status == 500:
            log.error("internal error", error=type(exc).__name__)
            return JSONResponse(error_body("internal_error", "the server could not do that"), 500)
        if isinstance(exc, DatabaseUnavailable):
            return _database_unavailable(exc)
        return JSONResponse(error_body(exc.code, exc.message, **extra), status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                problems.append("body: not valid JSON")
                continue
            if err.get("type") == "model_attributes_type" and _loc(tuple(err.get("loc", ()))) == "body" \
                    and "json" not in request.headers.get("content-type", ""):
                # FastAPI reads a body without a JSON content type as raw bytes
                problems.append("body: send it with 'Content-Type: application/json'")
                continue
            msg = str(err.get("msg", "invalid"))
            problems.append(f"{_loc(tuple(err.get('loc', ())))}: {msg}")
        message = "; ".join(problems[:20]) or "invalid request"
        return JSONResponse(error_body("invalid_request", message[:2000]), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            # a body that is not even text (bad UTF-8): the same answer as bad JSON
            return JSONResponse(error_body("invalid_request", "body: not valid JSON"), 422)
        code = HTTP_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(error_body(code, detail), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _any(_r: Request, exc: Exception) -> JSONResponse:
        gone = unavailable(exc)  # a driver's connection error that reached us unclassified
        if gone is not None:
            return _database_unavailable(gone)
        log.error("unhandled error", error=type(exc).__name__)
        return JSONResponse(error_body("internal_error", "the server could not do that"), 500)


def _database_unavailable(exc: DatabaseUnavailable) -> JSONResponse:
    """503 with Retry-After: the database is restarting or unreachable; nothing was done."""
    log.warning("database unavailable", error=exc.message)
    return JSONResponse(error_body(exc.code, exc.message), 503,
                        headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, by Content-Length or as they
    stream in (a pure ASGI middleware: nothing is buffered beyond the limit)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        started = over = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if over:  # the app caught _TooLarge as a body it could not parse: answer 413 instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._reject(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body("payload_too_large",
                                     f"the request body is larger than {self.limit} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class Options:
    """OPTIONS on any route's path answers 204 with an Allow header naming every method
    the path serves (Starlette alone names only the first matching route's)."""

    def __init__(self, app: ASGIApp, routes: list[Any]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            from starlette.routing import Match

            methods = {method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
                       if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in self.routes)}
            if methods:
                allow = ", ".join(sorted(methods | {"OPTIONS"}))
                await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)
