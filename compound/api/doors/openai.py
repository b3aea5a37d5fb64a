"""The OpenAI-compatible door: POST /v1/chat/completions with model "compound" and
GET /v1/models. Errors answer in OpenAI's shape {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema
from starlette.types import Receive, Scope, Send

from compound.api.doors.engine import AnswerText, Door, DoorAuthError, bearer_token_of
from compound.api.doors.inputs import BadField, load_json
from compound.api.doors.openai_errors import (
    AUTH_RESPONSES,
    CHAT_RESPONSES,
    OpenAIError,
    error_doc,
    task_error,
)
from compound.api.doors.openai_errors import OpenAIErrors as OpenAIErrors  # re-exported
from compound.api.doors.openai_errors import openai_error as openai_error  # re-exported
from compound.api.state import app_state
from compound.core.logging import get_logger
from compound.executor.answers import AnswerPiece

log = get_logger("compound.api.openai")
MODEL = "compound"
TASK_HEADER = "X-Compound-Task-Id"
router = APIRouter(tags=["openai"])


class ContentPart(BaseModel):
    # Described as a text part with its text, which is all the door accepts; any other
    # part answers a 400 naming it (text_of), not a validation error.
    model_config = ConfigDict(extra="allow", json_schema_extra={"required": ["type", "text"]})
    type: str = Field(json_schema_extra={"enum": ["text"]})
    text: Annotated[str | None, WithJsonSchema({"type": "string"})] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """What compound reads of a Chat Completions request; other fields (temperature,
    tools ...) are accepted and ignored: compound picks its own models."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1)
    metadata: dict[str, str] | None = None
    # compound's own fields (the openai SDK sends them with extra_body=...)
    budget_usd: float | None = Field(default=None, gt=0, le=10_000)
    priority: int | None = Field(default=None, ge=0, le=3)


def bearer_token(request: Request) -> str | None:
    return bearer_token_of(request.headers.get("authorization"))


def text_of(message: ChatMessage, where: str) -> str | None:
    """A message's text (its text parts joined); None when it has no content."""
    if message.content is None:
        return None
    if isinstance(message.content, str):
        return message.content
    parts = []
    for i, part in enumerate(message.content):
        if part.type != "text":
            raise OpenAIError(400, f"{where}.content.{i}: only text parts are supported (got {part.type[:40]!r})",
                              param=f"{where}.content")
        if part.text is None:
            raise OpenAIError(400, f"{where}.content.{i}: a text part needs its text, a string",
                              param=f"{where}.content")
        parts.append(part.text)
    return "\n".join(parts)


def split_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The last user message is the request; every other message with content is
    context (an assistant message may have none: it called tools)."""
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last is None:
        raise OpenAIError(400, "messages: needs a user message (the last one is the request)", param="messages")
    prompt = text_of(messages[last], f"messages.{last}")
    if prompt is None or not prompt.strip():
        raise OpenAIError(400, f"messages.{last}.content: the request (the last user message) needs text",
                          param=f"messages.{last}.content")
    context = []
    for i, m in enumerate(messages):
        text = text_of(m, f"messages.{i}")
        if i != last and text is not None:
            context.append({"role": m.role, "content": text})
    return prompt, context


def budget_and_priority(body: ChatRequest) -> tuple[float | None, int | None]:
    """Body fields first, then metadata (strings, as OpenAI's metadata is), else None
    (the settings' default budget, priority 2)."""
    budget, priority = body.budget_usd, body.priority
    meta = body.metadata or {}
    if budget is None and "budget_usd" in meta:
        try:
            budget = float(meta["budget_usd"])
        except ValueError:
            budget = -1.0
        if not 0 < budget <= 10_000:
            raise OpenAIError(400, f"metadata.budget_usd: {meta['budget_usd'][:40]!r} is not a number of USD "
                              "above 0 and at most 10000", param="metadata.budget_usd")
    if priority is None and "priority" in meta:
        if meta["priority"] not in ("0", "1", "2", "3"):
            raise OpenAIError(400, f"metadata.priority: {meta['priority'][:40]!r} is not 0, 1, 2 or 3",
                              param="metadata.priority")
        priority = int(meta["priority"])
    return budget, priority


def parse(data: bytes) -> ChatRequest:
    try:
        raw = load_json(data)
    except BadField as exc:
        raise OpenAIError(400, exc.message, param=None if exc.field == "body" else exc.field) from None
    if not isinstance(raw, dict):
        raise OpenAIError(400, f"invalid body: must be a JSON object (a chat completion request), not "
                          f"{type(raw).__name__}")
    try:
        body = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise OpenAIError(400, f"{loc}: {err.get('msg', 'invalid')}", param=loc) from None
    if body.model != MODEL:
        raise OpenAIError(404, f"the model {body.model[:80]!r} does not exist; this server offers {MODEL!r}",
                          code="model_not_found", param="model")
    return body


async def usage(door: Door, task_id: str) -> dict[str, int]:
    inp, out = await door.tokens(task_id)
    return {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out}


def compound_fields(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The extra `compound` object of a response: the task, its status and its cost."""
    return {"task_id": snapshot["id"], "status": snapshot["status"], "cost_usd": snapshot["total_cost_usd"],
            "budget_usd": snapshot["budget_usd"], "error": snapshot.get("error")}


@router.get("/v1/models", summary="The one model this server offers: compound",
            responses=AUTH_RESPONSES)
async def models(request: Request) -> Response:
    try:
        await Door(app_state(request.app)).authenticate(bearer_token(request))
    except DoorAuthError as exc:
        return openai_error(exc).response()
    return JSONResponse({"object": "list", "data": [model_card()]})


@router.get("/v1/models/{model}", summary="The compound model",
            responses={**AUTH_RESPONSES, 404: error_doc("no such model (`model_not_found`)")})
async def model(request: Request, model: str) -> Response:
    try:
        await Door(app_state(request.app)).authenticate(bearer_token(request))
    except DoorAuthError as exc:
        return openai_error(exc).response()
    if model != MODEL:
        return OpenAIError(404, f"the model {model[:80]!r} does not exist", code="model_not_found").response()
    return JSONResponse(model_card())


def model_card() -> dict[str, Any]:
    return {"id": MODEL, "object": "model", "created": 0, "owned_by": "compound"}


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its (non-recursive) $defs put in place, for openapi_extra."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


@router.post("/v1/chat/completions", summary="Chat Completions: the conversation's last user message becomes a task",
             responses=CHAT_RESPONSES,
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": inline_schema(ChatRequest.model_json_schema())}}, "required": True}})
async def chat_completions(request: Request) -> Response:
    door = Door(app_state(request.app))
    raw = await request.body()  # one over the size limit ends here: the app's BodyLimit answers 413
    try:
        principal = await door.authenticate(bearer_token(request))
        door.require(principal, "submit")
        body = parse(raw)
        prompt, context = split_messages(body.messages)
        budget, priority = budget_and_priority(body)
        last = max(i for i, m in enumerate(body.messages) if m.role == "user")
        snap = await door.submit(principal, prompt=prompt, budget_usd=budget, priority=priority,
                                 context=context or None,
                                 answer_max_tokens=body.max_completion_tokens or body.max_tokens,
                                 fields={"prompt": f"messages.{last}.content", "context": "messages"})
    except Exception as exc:  # every error in OpenAI's shape; an unexpected one is a logged 500
        return openai_error(exc).response()
    headers = {TASK_HEADER: snap["id"]}
    task_id = snap["id"]

    async def abandoned() -> None:
        if await door.cancel_abandoned(principal, task_id):
            log.info("chat client went away before the answer; task canceled", task_id=task_id)

    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return TaskStream(stream(door, task_id, include_usage=include_usage), on_abandon=abandoned,
                          media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
    final = await wait_or_abandon(door, task_id, request, abandoned)
    if final is None:  # the client is gone: nobody reads this
        return Response(status_code=499)
    err = task_error(final)
    if err is not None:
        return err.response(headers)
    return JSONResponse({
        "id": final["id"], "object": "chat.completion", "created": int(time.time()), "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": final["result"] or ""},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": await usage(door, final["id"]),
        "compound": compound_fields(final),
    }, headers=headers)


async def until_disconnected(receive: Receive) -> None:
    """Until the client closes the connection (the request's body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def wait_or_abandon(door: Door, task_id: str, request: Request,
                          abandoned: Callable[[], Awaitable[None]]) -> dict[str, Any] | None:
    """The finished task's snapshot; None when the client disconnected first (then
    `abandoned()` has run)."""
    waiting = asyncio.ensure_future(door.wait(task_id))
    watching = asyncio.ensure_future(until_disconnected(request.receive))
    try:
        await asyncio.wait({waiting, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done() and watching.exception() is None:  # the client left first
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            await abandoned()
            return None
        return await waiting  # the task ended (or the watch itself failed: wait on)
    finally:
        for t in (waiting, watching):
            t.cancel()
        await asyncio.gather(waiting, watching, return_exceptions=True)


class TaskStream(StreamingResponse):
    """A streamed answer whose client going away before the end runs `on_abandon` (the
    chat door cancels the task). It listens for the disconnect itself, whatever ASGI
    version the server speaks: a client can leave while nothing is being sent."""

    def __init__(self, content: AsyncIterator[str], *, on_abandon: Callable[[], Awaitable[None]],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_abandon = on_abandon

    async def __call__(self, _scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        watching = asyncio.ensure_future(until_disconnected(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (streaming, watching):
                t.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)
        if streaming.done() and not streaming.cancelled():
            exc = streaming.exception()
            if exc is None:
                return  # sent to the end
            if not isinstance(exc, OSError):
                raise exc
        await self.on_abandon()


async def stream(door: Door, task_id: str, *, include_usage: bool) -> AsyncIterator[str]:
    """Chat Completions chunks: a role chunk, progress as SSE comments (`: compound
    {...}`, which clients ignore), the answer as content deltas as the synthesis call
    streams it (AnswerText: only text that extends what was sent), the rest of the
    answer when the task ends, a finish chunk, [DONE]."""
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        data = {"id": task_id, "object": "chat.completion.chunk", "created": created, "model": MODEL,
                "choices": choices, **extra}
        return f"data: {json.dumps(data)}\n\n"

    def content(text: str) -> str:
        return chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    answer = AnswerText()
    async with door.following(task_id) as items:  # listening before the first byte goes out
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        async for item in items:
            if isinstance(item, AnswerPiece):
                new = answer.piece(item)
                if new:
                    yield content(new)
            else:
                yield f": compound {json.dumps(progress(item.kind, item.data))}\n\n"
    final = await door.read(task_id)
    err = task_error(final)
    rest = answer.rest(final["result"] or "") if err is None else None
    if err is None and rest is None:
        err = OpenAIError(502, f"task {task_id} {final['status']}, but the answer streamed so far is not the "
                          "start of its result (the answer's call failed midway); "
                          f"read the whole answer at GET /v1/tasks/{task_id}",
                          type="stream_interrupted", code="stream_interrupted")
    if err is not None:
        yield f"data: {json.dumps(err.body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    if rest:
        yield content(rest)
    yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], compound=compound_fields(final))
    if include_usage:
        yield chunk([], usage=await usage(door, task_id))
    yield "data: [DONE]\n\n"


def progress(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event, small: no results (the answer comes as content)."""
    keep = ("status", "index", "model", "cost_usd", "total_cost_usd", "error")
    return {"kind": kind, **{k: data[k] for k in keep if k in data}}
