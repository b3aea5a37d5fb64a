"""The OpenAI door's errors: compound's errors in OpenAI's shape
{"error": {"message", "type", "param", "code"}}, the middleware that reshapes the errors
raised outside the door, and the error answers the routes document."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compound.api.doors.engine import DoorAuthError, failure
from compound.api.doors.inputs import BadField
from compound.api.errors import ApiError
from compound.core.errors import BudgetExceeded, Conflict, DatabaseUnavailable, NotFound, UserInputError
from compound.core.logging import get_logger, redact_text
from compound.store.outage import unavailable

log = get_logger("compound.api.openai")


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": redact_text(self.message), "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        if self.status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
        if self.retry_after_s is not None:
            headers = {**(headers or {}), "Retry-After": str(max(1, round(self.retry_after_s)))}
        return JSONResponse(self.body(), self.status, headers=headers)


# compound's errors in OpenAI's words: (class, status, type, code); the first match wins
ERRORS: list[tuple[type[Exception], int, str, str]] = [
    (BudgetExceeded, 402, "insufficient_budget", "budget_too_small"),
    (UserInputError, 400, "invalid_request_error", "invalid_request"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (Conflict, 409, "invalid_request_error", "conflict"),
]
# a finished task without an answer: failure(snapshot) -> (status, type, code)
FAILURES = {
    "budget": (402, "insufficient_budget", "budget_exhausted"),
    "canceled": (409, "task_canceled", "canceled"),
    "failed": (502, "task_failed", "task_failed"),
}


def openai_error(exc: Exception) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, DoorAuthError):
        if exc.status == 401:
            return OpenAIError(401, exc.message, code="invalid_api_key")
        return OpenAIError(exc.status, exc.message, type="permission_error", code="insufficient_scope")
    if isinstance(exc, ApiError):
        kind = "rate_limit_error" if exc.status == 429 else "invalid_request_error"
        return OpenAIError(exc.status, exc.message, type=kind, code=exc.code)
    if isinstance(exc, BadField):
        return OpenAIError(400, exc.message, code="invalid_request", param=exc.field)
    gone = exc if isinstance(exc, DatabaseUnavailable) else unavailable(exc)
    if gone is not None:  # the database is restarting or unreachable: nothing was done
        return OpenAIError(503, gone.message, type="server_error", code=gone.code, retry_after_s=gone.retry_after_s)
    for cls, status, kind, code in ERRORS:
        if isinstance(exc, cls):
            return OpenAIError(status, getattr(exc, "message", str(exc)), type=kind, code=code)
    log.error("unexpected error in the chat door", error=type(exc).__name__)
    return OpenAIError(500, "the server could not do that", type="server_error", code="internal_error")


class OpenAIErrors:
    """The chat routes' errors that come from outside the door (the app's body size
    limit, a method not allowed, the app's last-resort handler), put in OpenAI's shape:
    an error body of compound's shape ({"error": {"code", "message"}}) on these paths
    is rewritten; the door's own errors pass as they are."""

    PATHS = ("/v1/chat/completions", "/v1/models")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.PATHS):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400 and any(
                    k.lower() == b"content-type" and v.startswith(b"application/json")
                    for k, v in message.get("headers", [])):
                held = message
                return
            if held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = openai_shaped(held["status"], b"".join(chunks))
                headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
                await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, sending)


def openai_shaped(status: int, body: bytes) -> bytes:
    """An error body of compound's shape in OpenAI's; any other body as it is."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or "type" in err:
        return body
    kind = {403: "permission_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": str(err.get("message", "")), "type": kind, "param": None,
                                 "code": err.get("code")}}).encode()


def task_error(snapshot: dict[str, Any]) -> OpenAIError | None:
    why = failure(snapshot)
    if why is None:
        return None
    status, kind, code = FAILURES[why]
    return OpenAIError(status, f"task {snapshot['id']} {snapshot['status']}: {snapshot.get('error') or why}",
                       type=kind, code=code)


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorOut(BaseModel):
    """OpenAI's error shape, which every answer of this door's errors has."""

    error: OpenAIErrorBody


def error_doc(description: str) -> dict[str, Any]:
    """An error answer as the OpenAPI document describes it."""
    return {"model": OpenAIErrorOut, "description": description}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: error_doc("missing, invalid or revoked token (`invalid_api_key`)"),
    403: error_doc("the token lacks the scope (`insufficient_scope`)"),
    503: error_doc("the database is unavailable for now (`database_unavailable`); see Retry-After"),
}
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    400: error_doc("the body is not a valid request, naming the field in `param`"),
    404: error_doc("`model` is not `compound` (`model_not_found`)"),
    402: error_doc("the budget cannot cover the task (`budget_too_small`, `budget_exhausted`)"),
    409: error_doc("the task was canceled (`canceled`)"),
    413: error_doc("the body is larger than COMPOUND_MAX_BODY_BYTES"),
    429: error_doc("too many submissions (`rate_limited`); see Retry-After"),
    502: error_doc("the task failed (`task_failed`)"),
}
