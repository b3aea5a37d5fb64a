"""The MCP door's front: the bearer token checked, and a POST body the MCP SDK cannot
answer properly refused with a JSON-RPC error, before the SDK sees the request."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compound.api.doors.engine import Door, DoorAuthError, bearer_token_of
from compound.api.doors.inputs import BadField, load_json, shown

INVALID_REQUEST, INVALID_PARAMS = -32600, -32602
PRINCIPAL = "compound.principal"  # the scope key the authenticated principal goes under


class BearerGate:
    """Refuses /mcp without a live compound token (401 in the MCP SDK's own shape) and
    hands the principal to the tools through the ASGI scope. A POST body that is not a
    JSON-RPC message the SDK can answer (an id that is neither a string nor an integer,
    JSON nested too deep, a number that is not finite, a lone surrogate) is answered here
    with a JSON-RPC error: the SDK would take it for a notification and answer nothing."""

    def __init__(self, app: ASGIApp, door: Callable[[], Door]) -> None:
        self.app, self.door = app, door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            try:
                scope[PRINCIPAL] = await self.door().authenticate(bearer_token_of(headers.get("authorization")))
            except DoorAuthError as exc:
                body = json.dumps({"error": "invalid_token", "error_description": exc.message}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'Bearer error="invalid_token", error_description="{exc.message}"'
                     .encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            if scope.get("method") == "POST":
                raw, receive = await read_body(receive)
                refusal = rpc_refusal(raw)
                if refusal is not None:
                    await send_json(send, 400, refusal)
                    return
        await self.app(scope, receive, send)


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a receive that gives it again, then what follows."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def rpc_refusal(raw: bytes) -> dict[str, Any] | None:
    """The JSON-RPC error for a body the SDK cannot answer properly; None for the rest
    (not JSON at all: the SDK answers a parse error itself; a number out of bounds: the
    tool says what is wrong with it)."""
    try:
        data = load_json(raw, finite=False)
    except BadField as exc:
        if exc.field == "body":
            return None
        code = INVALID_PARAMS if exc.field.startswith("params") else INVALID_REQUEST
        return rpc_error(None, code, exc.message)
    for message in data if isinstance(data, list) else [data]:
        if isinstance(message, dict) and "id" in message:
            rid = message["id"]
            if isinstance(rid, bool) or not isinstance(rid, str | int):
                return rpc_error(None, INVALID_REQUEST,
                                 f"invalid id: a request's id must be a string or an integer (got {shown(rid)})")
    return None


def rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
