"""What both wire formats share: request bodies, the tools a request offers, server-sent
events (paced, or cut by a scripted failure) and the providers' error bodies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from compound.simulator.answers import tokens
from compound.simulator.script import Failure

_PIECE = 24  # characters per streamed delta


def pieces(text: str) -> list[str]:
    """The text in the pieces a stream sends it in (at least one, maybe empty)."""
    return [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)] or [""]


class DroppedStream(Exception):
    """Raised in a streamed body to drop the connection midway (a scripted failure)."""


class _Droppable(StreamingResponse):
    """A stream that may end with its connection dropped, the body left unfinished."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except DroppedStream:
            return  # the server closes a response it never finished


def sse(events: list[tuple[str, dict[str, Any]]], *, anthropic: bool, cut: Failure | None = None,
         token_s: float = 0.0, record: dict[str, Any] | None = None) -> StreamingResponse:
    """`token_s`: seconds per output token; each text piece waits for its tokens.
    `record["ended_at"]` is set when the last event has been sent (or the stream cut)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in events_body():
                yield chunk
        finally:
            if record is not None:
                record["ended_at"] = time.time()

    async def events_body() -> AsyncIterator[bytes]:
        sent = 0
        for name, data in events:
            if cut is not None and sent >= cut.after_pieces:
                if cut.midstream == "drop":
                    raise DroppedStream("the simulator drops this stream (scripted)")
                error = error_body("anthropic" if anthropic else "openai", cut)
                yield (b"event: error\n" if anthropic else b"") + f"data: {json.dumps(error)}\n\n".encode()
                return
            delta = data.get("delta", {}) if anthropic else (data.get("choices") or [{}])[0].get("delta", {})
            piece = delta.get("text") or delta.get("content")
            if piece and token_s > 0:  # the piece is sent once the model has written it
                await asyncio.sleep(tokens(piece) * token_s)
            head = f"event: {name}\n" if name else ""
            yield f"{head}data: {json.dumps(data)}\n\n".encode()
            sent += bool(piece or delta.get("partial_json") or delta.get("tool_calls"))
        if not anthropic:
            yield b"data: [DONE]\n\n"

    return _Droppable(body(), media_type="text/event-stream")


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or its text and tool_result blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(content_text(b.get("content")) if b.get("type") == "tool_result" else b.get("text", "")
                         for b in content if isinstance(b, dict))
    return ""


@dataclass
class Offered:
    """The tools a request offers, as (wire name, input schema), the tool results its
    conversation already holds, and whether it forbids calls (tool_choice "none")."""

    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    none: bool = False

    def wire(self, name: str) -> str:
        """The wire name of a scripted call: the offered tool's, else the name as given."""
        from compound.llm.toolwire import wire_name

        offered = {n for n, _s in self.tools}
        if name in offered:
            return name
        return wire_name(name) if wire_name(name) in offered else name


def input_object(args: str) -> dict[str, Any]:
    """A tool_use block's input: the arguments' object (the Messages API always answers
    one; text that is none is wrapped as compound's adapters read it)."""
    from compound.llm.toolwire import parse_arguments

    return parse_arguments(args)


async def read_json(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"error": {"type": "invalid_request_error", "message": "body is not JSON"}}, 400)
    if not isinstance(body, dict):
        return JSONResponse({"error": {"type": "invalid_request_error", "message": "body must be an object"}}, 400)
    return body


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 429: "rate_limit_error", 500: "api_error",
                    503: "api_error", 504: "api_error", 529: "overloaded_error"}


def error_body(wire: str, f: Failure) -> dict[str, Any]:
    """The provider's error body for the failure's status (also the data of an error
    event in a stream)."""
    message = f.message or f"simulated error {f.status}"
    if wire == "anthropic":
        kind = _ANTHROPIC_TYPES.get(f.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": "server_error" if f.status >= 500 else "invalid_request_error",
                      "param": None, "code": str(f.status)}}


def error_response(wire: str, f: Failure) -> JSONResponse:
    headers = {"retry-after": str(f.retry_after)} if f.retry_after is not None else {}
    headers.update(f.headers)
    return JSONResponse(error_body(wire, f), status_code=f.status, headers=headers)

