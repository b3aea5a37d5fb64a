"""The A2A door: an agent card at /.well-known/agent-card.json and JSON-RPC at /a2a
(A2A 1.0 methods, and the 0.3 names message/send, message/stream, tasks/get, tasks/cancel),
mapped onto compound's tasks. Bearer auth, declared in the card, guards /a2a."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, NoReturn

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    InvalidParamsError,
    InvalidRequestError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from google.protobuf.struct_pb2 import Struct  # type: ignore[import-untyped]

from compound.api.doors.engine import AnswerText, Door, DoorAuthError, Event, bearer_token_of
from compound.api.doors.inputs import (
    BadField,
    checked_budget,
    checked_priority,
    load_json,
    shown,
    too_deep,
    valid_unicode,
)
from compound.api.errors import ApiError
from compound.api.state import app_state
from compound.core.errors import BudgetExceeded, Conflict, NotFound, UserInputError
from compound.executor.answers import AnswerPiece
from compound.store.models import TaskStatus
from compound.store.values import Principal

RPC_PATH = "/a2a"
PRINCIPAL = "compound.principal"
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602  # JSON-RPC's codes

# compound's task status -> A2A's task state
STATES: dict[str, Any] = {
    TaskStatus.queued: pb.TASK_STATE_SUBMITTED,
    TaskStatus.planning: pb.TASK_STATE_WORKING,
    TaskStatus.planned: pb.TASK_STATE_WORKING,
    TaskStatus.executing: pb.TASK_STATE_WORKING,
    TaskStatus.completed: pb.TASK_STATE_COMPLETED,
    TaskStatus.partial: pb.TASK_STATE_COMPLETED,  # an answer, with what is missing in its status message
    TaskStatus.failed: pb.TASK_STATE_FAILED,
    TaskStatus.canceled: pb.TASK_STATE_CANCELED,
}
# compound's errors -> A2A's (JSON-RPC) errors; the first match wins
ERRORS: list[tuple[type[Exception], type[Exception]]] = [
    (NotFound, TaskNotFoundError),
    (Conflict, TaskNotCancelableError),
    (BudgetExceeded, InvalidParamsError),
    (UserInputError, InvalidParamsError),
]


def a2a_error(exc: Exception) -> Exception:
    if isinstance(exc, DoorAuthError | ApiError):
        return InvalidRequestError(message=exc.message)
    for cls, target in ERRORS:
        if isinstance(exc, cls):
            return target(message=getattr(exc, "message", str(exc)))  # type: ignore[call-arg]
    return exc


def agent_card(base_url: str) -> pb.AgentCard:
    card = pb.AgentCard(
        name="compound",
        description="Turns one natural-language request into a DAG of tiered subtasks, runs it under a hard "
                    "budget and answers with one synthesized result.",
        version="0.1.0",
        supported_interfaces=[pb.AgentInterface(url=base_url.rstrip("/") + RPC_PATH, protocol_binding="JSONRPC",
                                                protocol_version="1.0")],
        capabilities=pb.AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[pb.AgentSkill(
            id="compound-task", name="Plan and answer a request",
            description="Plans the request as subtasks on cheap to strong models, runs them in parallel under "
                        "a budget (message metadata budget_usd, priority 0-3) and synthesizes one answer.",
            tags=["planning", "research", "writing", "budget"],
            examples=["Compare SQLite and PostgreSQL for a small team and recommend one"],
            input_modes=["text/plain"], output_modes=["text/plain"])],
    )
    card.security_schemes["bearer"].http_auth_security_scheme.CopyFrom(pb.HTTPAuthSecurityScheme(
        scheme="Bearer", bearer_format="compound token",
        description="a token from `compound tokens create`"))
    req = card.security_requirements.add()
    req.schemes["bearer"].SetInParent()
    return card


def _struct(data: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(data)
    return s


def _text_message(task_id: str, text: str) -> pb.Message:
    return pb.Message(message_id=f"{task_id}-status", context_id=task_id, task_id=task_id, role=pb.ROLE_AGENT,
                      parts=[pb.Part(text=text)])


def answer_artifact(snapshot: dict[str, Any]) -> pb.Artifact:
    return pb.Artifact(artifact_id=f"{snapshot['id']}-answer", name="answer", parts=[pb.Part(text=snapshot["result"])])


def status_of(snapshot: dict[str, Any]) -> pb.TaskStatus:
    status = pb.TaskStatus(state=STATES.get(snapshot["status"], pb.TASK_STATE_WORKING))
    note = snapshot.get("error")
    if note:
        status.message.CopyFrom(_text_message(snapshot["id"], note))
    return status


def compound_meta(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"compound": {"status": snapshot["status"], "cost_usd": snapshot["total_cost_usd"],
                         "budget_usd": snapshot["budget_usd"], "error": snapshot.get("error")}}


def task_of(snapshot: dict[str, Any]) -> pb.Task:
    """A compound task as an A2A Task: the context id is the task id (compound keeps no
    conversations), the answer is the artifact "answer", the cost is in metadata.compound."""
    task = pb.Task(id=snapshot["id"], context_id=snapshot["id"], status=status_of(snapshot),
                   metadata=_struct(compound_meta(snapshot)))
    if snapshot.get("result"):
        task.artifacts.append(answer_artifact(snapshot))
    return task


def request_of(params: pb.SendMessageRequest) -> tuple[str, float | None, int | None]:
    """The prompt (the message's text parts) and budget/priority from the message's or
    the request's metadata."""
    texts = [p.text for p in params.message.parts if p.text]
    if not texts:
        raise InvalidParamsError(message="message.parts: needs a text part (the request)")
    meta: dict[str, Any] = {}
    for source in (params.metadata, params.message.metadata):
        meta.update(MessageToDict(source))
    try:
        budget = checked_budget(meta.get("budget_usd"), "metadata.budget_usd")
        priority = checked_priority(meta.get("priority"), "metadata.priority")
    except BadField as exc:
        raise InvalidParamsError(message=exc.message) from None
    return "\n".join(texts), budget, priority


class CompoundAgent(RequestHandler):
    """A2A's request handler over the engine door: no task store of its own."""

    def __init__(self, door: Callable[[], Door]) -> None:
        self._door = door

    @property
    def door(self) -> Door:
        return self._door()

    @staticmethod
    def principal(context: ServerCallContext) -> Principal:
        principal = context.state.get("principal")
        if not isinstance(principal, Principal):  # the route refuses first; never reached
            raise InvalidRequestError(message="missing bearer token")
        return principal

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except (DoorAuthError, ApiError, NotFound, Conflict, UserInputError, BudgetExceeded) as exc:
            raise a2a_error(exc) from None

    async def _submit(self, params: pb.SendMessageRequest, context: ServerCallContext) -> dict[str, Any]:
        prompt, budget, priority = request_of(params)
        principal = self.principal(context)
        # A message naming a task (or a context: compound's are its task ids) names one the
        # caller can see, else TaskNotFound; compound keeps no conversations, so a visible
        # one starts a new task all the same.
        for named in dict.fromkeys(i for i in (params.message.task_id, params.message.context_id) if i):
            await self._call(lambda named=named: self.door.snapshot(principal, named))  # type: ignore[misc]
        return await self._call(lambda: self.door.submit(  # type: ignore[no-any-return]
            principal, prompt=prompt, budget_usd=budget, priority=priority,
            fields={"prompt": "message.parts", "budget_usd": "metadata.budget_usd", "priority": "metadata.priority"}))

    async def on_message_send(self, params: pb.SendMessageRequest, context: ServerCallContext) -> pb.Task:
        snap = await self._submit(params, context)
        if params.configuration.return_immediately:
            return task_of(snap)
        return task_of(await self.door.wait(snap["id"]))

    async def on_message_send_stream(self, params: pb.SendMessageRequest,
                                     context: ServerCallContext) -> AsyncGenerator[Any]:
        snap = await self._submit(params, context)
        async for item in self._follow(snap["id"], first=task_of(snap)):
            yield item

    async def _follow(self, task_id: str, after: int = 0, *, first: pb.Task | None = None) -> AsyncGenerator[Any]:
        """`first` (sent once the answer is listened to), status updates as the DAG runs;
        the answer artifact in chunks as the synthesis call streams it (append=True after
        the first); at the end the rest of the answer with last_chunk=True (or the whole
        answer, append=False, replacing what was sent when that is not the start of the
        answer), then the final status."""
        door = self.door
        answer = AnswerText()
        ended = streamed = False
        async with door.following(task_id, after) as items:
            if first is not None:
                yield first
            async for item in items:
                if isinstance(item, AnswerPiece):
                    new = answer.piece(item)
                    if new:
                        yield self._chunk(task_id, new, append=streamed, last=False)
                        streamed = True
                elif item.terminal:
                    ended = True
                else:
                    yield self._update(task_id, item)
        if not ended:
            return
        final = await door.read(task_id)
        result = final.get("result") or ""
        rest = answer.rest(result)
        if streamed and rest is not None:
            yield self._chunk(task_id, rest, append=True, last=True)
        elif result or streamed:  # nothing streamed, or what was is not the answer: all of it, replacing
            yield self._chunk(task_id, result, append=False, last=True)
        yield pb.TaskStatusUpdateEvent(task_id=task_id, context_id=task_id, status=status_of(final),
                                       metadata=_struct(compound_meta(final)))

    @staticmethod
    def _chunk(task_id: str, text: str, *, append: bool, last: bool) -> pb.TaskArtifactUpdateEvent:
        return pb.TaskArtifactUpdateEvent(task_id=task_id, context_id=task_id, append=append, last_chunk=last,
                                          artifact=pb.Artifact(artifact_id=f"{task_id}-answer", name="answer",
                                                               parts=[pb.Part(text=text)]))

    @staticmethod
    def _update(task_id: str, ev: Event) -> pb.TaskStatusUpdateEvent:
        d = ev.data
        if ev.kind == "subtask":
            text = f"subtask {d.get('index')} {d.get('status')}"
            state: Any = pb.TASK_STATE_WORKING
        elif ev.kind == "tool_call":
            text = f"subtask {d.get('index')}: tool call {d.get('tool')} {d.get('status')}"
            state = pb.TASK_STATE_WORKING
        else:
            text = f"task {d.get('status')}"
            state = STATES.get(str(d.get("status")), pb.TASK_STATE_WORKING)
        meta: dict[str, Any] = {"compound": {"seq": ev.seq, "kind": ev.kind,
                             **{k: d[k] for k in ("status", "index", "cost_usd", "total_cost_usd") if k in d}}}
        return pb.TaskStatusUpdateEvent(task_id=task_id, context_id=task_id,
                                        status=pb.TaskStatus(state=state,
                                                             message=_text_message(task_id, text)),
                                        metadata=_struct(meta))

    async def on_get_task(self, params: pb.GetTaskRequest, context: ServerCallContext) -> pb.Task | None:
        principal = self.principal(context)

        async def read() -> dict[str, Any]:
            return await self.door.snapshot(principal, params.id)

        return task_of(await self._call(read))

    async def on_cancel_task(self, params: pb.CancelTaskRequest, context: ServerCallContext) -> pb.Task | None:
        principal = self.principal(context)
        return task_of(await self._call(lambda: self.door.cancel(principal, params.id)))

    async def on_list_tasks(self, params: pb.ListTasksRequest, context: ServerCallContext) -> pb.ListTasksResponse:
        principal = self.principal(context)

        async def listing() -> tuple[list[dict[str, Any]], str | None]:
            return await self.door.recent(principal, limit=params.page_size or 20, cursor=params.page_token or None)

        rows, cursor = await self._call(listing)
        tasks = [pb.Task(id=r["id"], context_id=r["id"],
                         status=pb.TaskStatus(state=STATES.get(r["status"], pb.TASK_STATE_WORKING)),
                         metadata=_struct({"compound": {"status": r["status"], "cost_usd": r["total_cost_usd"]}}))
                 for r in rows]
        return pb.ListTasksResponse(tasks=tasks, next_page_token=cursor or "", page_size=len(tasks))

    async def on_subscribe_to_task(self, params: pb.SubscribeToTaskRequest,
                                   context: ServerCallContext) -> AsyncGenerator[Any]:
        principal = self.principal(context)

        async def read() -> dict[str, Any]:
            return await self.door.snapshot(principal, params.id)

        snap = await self._call(read)
        async for item in self._follow(snap["id"], first=task_of(snap)):
            yield item

    # No push notifications and no extended card: the SDK's own "not supported" errors.
    async def on_create_task_push_notification_config(self, *_: Any) -> NoReturn:
        raise PushNotificationNotSupportedError

    async def on_get_task_push_notification_config(self, *_: Any) -> NoReturn:
        raise PushNotificationNotSupportedError

    async def on_list_task_push_notification_configs(self, *_: Any) -> NoReturn:
        raise PushNotificationNotSupportedError

    async def on_delete_task_push_notification_config(self, *_: Any) -> NoReturn:
        raise PushNotificationNotSupportedError

    async def on_get_extended_agent_card(self, *_: Any) -> NoReturn:
        raise ExtendedAgentCardNotConfiguredError


class _ContextBuilder(DefaultServerCallContextBuilder):
    """The A2A call context, carrying the principal the route authenticated."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        headers = context.state.get("headers") or {}
        headers.pop("authorization", None)  # the bearer token stays out of the context
        context.state["principal"] = request.scope.get(PRINCIPAL)
        return context


def unauthorized(request_id: Any, message: str) -> JSONResponse:
    return JSONResponse({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32600, "message": message}},
                        401, headers={"WWW-Authenticate": "Bearer"})


async def card(request: Request) -> Response:
    return JSONResponse(MessageToDict(agent_card(str(request.base_url))))


async def rpc(request: Request) -> Response:
    try:
        door = Door(app_state(request.app))
        principal = await door.authenticate(bearer_token_of(request.headers.get("authorization")))
    except DoorAuthError as exc:
        return unauthorized(None, exc.message)
    request.scope[PRINCIPAL] = principal
    raw = await request.body()
    refusal = refused(raw) or mixed_versions(raw, request.headers.get("a2a-version"))
    if refusal is not None:
        return JSONResponse(refusal)
    return await dispatcher(request.app).handle_requests(request)


def mixed_versions(raw: bytes, version: str | None) -> dict[str, Any] | None:
    """A 0.3 method name sent as A2A 1.0 (the SDK's 0.3 adapter would call that an
    internal error): an invalid request saying which name to use."""
    data = json.loads(raw)
    method = data.get("method") if isinstance(data, dict) else None
    if not isinstance(method, str) or "/" not in method or version is None or version.strip() in ("", "0.3"):
        return None
    return {"jsonrpc": "2.0", "id": request_id_of(raw), "error": {"code": INVALID_REQUEST, "message": (
        f"invalid method: {shown(method)} is an A2A 0.3 name; with A2A-Version {shown(version)} use the 1.0 "
        "names (SendMessage, SendStreamingMessage, GetTask, CancelTask, ListTasks, SubscribeToTask)")}}


def refused(raw: bytes) -> dict[str, Any] | None:
    """The JSON-RPC error for a body no handler should see: nested deeper than any
    request, a number that is not finite (NaN, Infinity, 1e400), a lone surrogate. The
    field is named; under `params` it is invalid params (-32602), else an invalid
    request (-32600); a body that is not JSON at all is a parse error (-32700)."""
    try:
        load_json(raw)
    except BadField as exc:
        if exc.field == "body":
            code = PARSE_ERROR
        else:
            code = INVALID_PARAMS if exc.field.startswith("params") else INVALID_REQUEST
        return {"jsonrpc": "2.0", "id": request_id_of(raw), "error": {"code": code, "message": exc.message}}
    return None


def request_id_of(raw: bytes) -> str | int | None:
    """The request's id, when the body can be read at all (else null, as JSON-RPC says)."""
    try:
        data = json.loads(raw) if too_deep(raw.decode("utf-8", "replace")) is None else None
    except (ValueError, RecursionError):
        return None
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) and valid_unicode(str(rid)) else None


def dispatcher(app: FastAPI) -> JsonRpcDispatcher:
    """The app's JSON-RPC dispatcher, made on first use."""
    found: JsonRpcDispatcher | None = getattr(app.state, "a2a_dispatcher", None)
    if found is None:
        found = app.state.a2a_dispatcher = JsonRpcDispatcher(
            CompoundAgent(lambda: Door(app_state(app))), context_builder=_ContextBuilder(), enable_v0_3_compat=True)
    return found
