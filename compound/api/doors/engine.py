"""The one way the front doors (chat completions, MCP, A2A) reach the engine: submit,
read, list, cancel, approve, wait for and watch tasks. Re-point this module, not the doors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from compound.api.auth import AuthRefused, authenticate, require_scope
from compound.api.doors.inputs import (
    BadField,
    check_json,
    checked_budget,
    checked_priority,
    checked_text,
    shown,
)
from compound.api.routes_tasks import submit_to
from compound.api.schemas import MAX_DENY_MESSAGE_CHARS, TaskCreate
from compound.api.state import AppState
from compound.core.errors import BudgetExceeded, Conflict, NotFound
from compound.core.money import shown_usd, worst_case_usd
from compound.core.secrets import redact_data
from compound.core.settings import Settings
from compound.executor.answers import AnswerPiece
from compound.planner.estimate import estimate_cost
from compound.planner.plan import critical_path, waves
from compound.planner.validate import is_clean_text, validate_plan
from compound.prompts import render
from compound.store.base import RunStore
from compound.store.models import TERMINAL_TASK, EndReason, TaskStatus
from compound.store.ops import tool_shown
from compound.store.users import UserStore
from compound.store.values import Principal

# Who is calling could not be told (401) or may not do this (403): each door maps it
# to its own protocol's shape.
DoorAuthError = AuthRefused


def bearer_token_of(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str  # "task" or "subtask" (store/ops.py has the data shapes)
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.kind == "task" and self.data.get("status") in TERMINAL_TASK


def failure(snapshot: dict[str, Any]) -> str | None:
    """Why a finished task has no answer: "canceled", "budget" or "failed"; None when it
    has one (completed or partial). Read from the task's typed `end_reason`."""
    status = snapshot["status"]
    if status == TaskStatus.canceled:
        return "canceled"
    if status == TaskStatus.failed:
        return "budget" if snapshot.get("end_reason") == EndReason.budget else "failed"
    return None


class AnswerText:
    """What of a streamed answer a client that only appends may be sent: text that
    extends what it already has. Pieces of one synthesis attempt go out as they come; a
    retried attempt (the text starts over) goes out only from where it passes what was
    sent, and only while it begins with it. At the end, `rest(answer)` is what is left to
    send, or None when the text sent is not the start of the answer (an attempt failed
    after its text began and the answer differs): the client cannot be made whole."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._sent_len = 0
        self._attempt: int | None = None
        self._current: list[str] = []
        self._in_step = True  # the current attempt's text is exactly what was sent

    @property
    def text(self) -> str:
        return "".join(self.sent)

    def piece(self, p: AnswerPiece) -> str:
        """The new text to send for this piece ("" for none)."""
        if p.attempt != self._attempt:
            self._attempt, self._current = p.attempt, []
            self._in_step = self._sent_len == 0
        self._current.append(p.text)
        if self._in_step:
            self.sent.append(p.text)
            self._sent_len += len(p.text)
            return p.text
        current = "".join(self._current)
        if len(current) <= self._sent_len:
            return ""
        sent = self.text
        if not current.startswith(sent):
            return ""
        new = current[self._sent_len:]
        self.sent, self._sent_len, self._in_step = [current], len(current), True
        return new

    def rest(self, answer: str) -> str | None:
        sent = self.text
        return answer[len(sent):] if answer.startswith(sent) else None


class Door:
    """The engine as the doors see it, over the app's state (settings, store, executor)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def store(self) -> RunStore:
        return self.state.store

    @property
    def users(self) -> UserStore:
        return self.state.store

    # who is calling ------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        """The routes' own authenticate(), through the app's token cache."""
        return await authenticate(self.state.tokens, token)

    async def local_principal(self, name: str = "local") -> Principal:
        """The user of a desktop host on the local store (`compound mcp` without a token)."""
        user = await self.users.user_named(name)
        return Principal(user_id=user.id, user_name=user.name, scopes=frozenset({"submit", "read"}),
                         token_id=f"local:{name}")

    @staticmethod
    def require(principal: Principal, scope: str) -> None:
        require_scope(principal, scope)

    @staticmethod
    def owner(principal: Principal) -> str | None:
        return None if principal.is_admin else principal.user_id

    # tasks ---------------------------------------------------------------------------

    async def submit(self, principal: Principal, *, prompt: str, budget_usd: float | None = None,
                     priority: int | None = None, context: list[dict[str, str]] | None = None,
                     answer_max_tokens: int | None = None, plan: dict[str, Any] | None = None,
                     approve: bool = True, fields: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Store and start a task; its snapshot. Every value is checked first (a BadField
        names it, by its name in `fields` when the door calls it otherwise: prompt,
        budget_usd, priority, context, plan); the answer's max_tokens is bounded by
        COMPOUND_SYNTHESIS_MAX_TOKENS here, so what is stored is what is used. Without a
        plan, a budget that cannot pay for the planner's call is refused here
        (BudgetExceeded) instead of failing later."""
        self.require(principal, "submit")
        names = fields or {}
        limit = self.settings.max_prompt_chars
        checked_text(prompt if isinstance(prompt, str) else "", names.get("prompt", "prompt"), limit=limit)
        budget = checked_budget(budget_usd, names.get("budget_usd", "budget_usd")) \
            or self.settings.default_budget_usd
        priority = checked_priority(priority, names.get("priority", "priority"))
        self._check_context(context, names.get("context", "context"))
        if plan is not None:
            check_json(plan, (names.get("plan", "plan"),))
        if answer_max_tokens is not None:
            answer_max_tokens = max(1, min(answer_max_tokens, self.settings.synthesis_max_tokens))
        try:
            body = TaskCreate(prompt=prompt, budget_usd=budget, priority=2 if priority is None else priority,
                              plan=plan, approve=approve)
        except ValidationError as exc:  # the checks above leave nothing for it; a net all the same
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err.get("loc") else "body"
            raise BadField(names.get(name, name), str(err.get("msg", "invalid"))) from None
        if plan is None:
            needed = self.planner_worst_case(prompt, context)
            if needed > budget:
                raise BudgetExceeded(
                    f"a budget of ${budget:g} cannot pay for planning this request: the planner's call may "
                    f"cost up to ${needed:.6f}; raise the budget")
        task = await submit_to(self.state, principal, body, context=context, answer_max_tokens=answer_max_tokens)
        return await self.read(task.id)

    def _check_context(self, context: list[dict[str, str]] | None, field: str) -> None:
        if not context:
            return
        chars = sum(len(m["content"]) for m in context)
        limit = self.settings.max_prompt_chars
        if chars > limit:
            raise BadField(field, f"the earlier messages hold {chars} characters; at most {limit} are accepted "
                           "as context")
        if not all(is_clean_text(m["content"]) and is_clean_text(m["role"]) for m in context):
            raise BadField(field, "a message contains a NUL character or a lone surrogate")

    @staticmethod
    def task_id(task_id: object) -> str:
        """A task id as a caller sent it: one no task can have (not text, a NUL, a lone
        surrogate, too long) is NotFound here, before it reaches a store query."""
        if not isinstance(task_id, str) or len(task_id) > 200 or not is_clean_text(task_id):
            raise NotFound(f"no task with id {shown(task_id)}")
        return task_id

    async def snapshot(self, principal: Principal, task_id: str) -> dict[str, Any]:
        """The task's snapshot; another user's task is NotFound."""
        self.require(principal, "read")
        return await self.store.snapshot(self.task_id(task_id), user_id=self.owner(principal))

    async def read(self, task_id: str) -> dict[str, Any]:
        """The snapshot of a task the caller already owns (after submit or a wait)."""
        return await self.store.snapshot(task_id)

    async def recent(self, principal: Principal, *, limit: int = 20, status: str | None = None,
             cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        self.require(principal, "read")
        if status is not None and status not in set(TaskStatus):
            raise BadField("status", f"{shown(status)} is not one of {', '.join(TaskStatus)}")
        if cursor is not None and (len(cursor) > 200 or not is_clean_text(cursor)):
            raise BadField("cursor", "not a cursor this server gave out; use next_cursor as returned")
        return await self.store.list_tasks(user_id=self.owner(principal), limit=max(1, min(limit, 100)),
                                           status=status, cursor=cursor)

    async def cancel(self, principal: Principal, task_id: str) -> dict[str, Any]:
        self.require(principal, "submit")
        await self.store.head(self.task_id(task_id), user_id=self.owner(principal))
        await self.state.executor.cancel(task_id)
        return await self.read(task_id)

    async def approve(self, principal: Principal, task_id: str) -> dict[str, Any]:
        self.require(principal, "submit")
        await self.store.head(self.task_id(task_id), user_id=self.owner(principal))
        await self.state.executor.approve(task_id)
        return await self.read(task_id)

    async def decide_call(self, principal: Principal, task_id: str, call_id: str, *, approve: bool,
                          arguments: dict[str, Any] | None = None, message: str | None = None) -> dict[str, Any]:
        """Approve (with `arguments` when given, edited) or deny (with `message`) a tool
        call held for approval, then wake the run holding it; the call as decided, with
        its subtask's index. NotFound for no such task or call (or not the caller's),
        Conflict when the call does not await a decision."""
        self.require(principal, "submit")
        if not isinstance(call_id, str) or len(call_id) > 200 or not is_clean_text(call_id):
            raise NotFound(f"no tool call with id {shown(call_id)}")
        if arguments is not None:
            check_json(arguments, ("arguments",))
        if message is not None:
            checked_text(message, "message", limit=MAX_DENY_MESSAGE_CHARS)
        await self.store.head(self.task_id(task_id), user_id=self.owner(principal))
        rec = await self.store.decide_tool_call(task_id, call_id, approve=approve, by=principal.user_name,
                                                arguments=arguments, message=message)
        await self.state.executor.wake(task_id)
        return redact_data({"index": rec.subtask, **tool_shown(rec)})  # type: ignore[no-any-return]

    async def wait(self, task_id: str) -> dict[str, Any]:
        """Until the task is terminal; its snapshot then."""
        await self.state.executor.wait(task_id)
        return await self.read(task_id)

    async def wait_planned(self, task_id: str) -> dict[str, Any]:
        await self.state.executor.wait_planned(task_id)
        return await self.read(task_id)

    async def events(self, task_id: str, after: int = 0) -> AsyncGenerator[Event, None]:
        """The task's events after seq `after`, as they happen, ending with the terminal one."""
        async with self.store.subscribe(task_id, after=after) as sub:
            if (await self.store.head(task_id)).status in TERMINAL_TASK and not await self.store.events_after(
                    task_id, after, limit=1):
                return  # ended, and nothing left to replay
            async for row in sub:
                ev = Event(row.seq, row.kind, dict(row.data))
                yield ev
                if ev.terminal:
                    return

    @asynccontextmanager
    async def following(self, task_id: str, after: int = 0) -> AsyncIterator[AsyncIterator[Event | AnswerPiece]]:
        """events(), with the pieces of the task's answer as the synthesis call streams
        them (executor/answers.py), listened to from the moment this is entered (a door
        enters before it sends its first byte, so its client cannot miss a piece). When
        the task runs in another process (the executor's own, or a queue-mode worker),
        the pieces are relayed from there (executor/answers.py's RemoteAnswers)."""
        answers = self.state.executor.answers
        queue: asyncio.Queue[Event | AnswerPiece | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for ev in self.events(task_id, after):
                    queue.put_nowait(ev)
                queue.put_nowait(None)
            except Exception as exc:  # e.g. the store failed: the reader hears it
                queue.put_nowait(exc)

        async def items() -> AsyncIterator[Event | AnswerPiece]:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item

        with answers.listen(task_id, queue.put_nowait):
            pumping = asyncio.get_running_loop().create_task(pump())
            try:
                yield items()
            finally:
                pumping.cancel()
                await asyncio.gather(pumping, return_exceptions=True)

    async def follow(self, task_id: str, after: int = 0) -> AsyncIterator[Event | AnswerPiece]:
        """following() as one iterator."""
        async with self.following(task_id, after) as items:
            async for item in items:
                yield item

    async def cancel_abandoned(self, principal: Principal, task_id: str) -> bool:
        """Cancel a task whose client went away before its answer (as
        POST /v1/tasks/{id}/cancel does); False when it had already ended."""
        try:
            await self.cancel(principal, task_id)
        except (Conflict, NotFound):
            return False
        return True

    async def tokens(self, task_id: str) -> tuple[int, int]:
        """(input, output) tokens of all the task's calls."""
        return await self.store.task_tokens(task_id)

    # plans and money -------------------------------------------------------------------

    def validate(self, plan: dict[str, Any]) -> dict[str, Any]:
        from compound.core.errors import PlanInvalid

        try:
            from compound.plugins import load_plugins

            valid = validate_plan(plan, max_subtasks=self.settings.max_subtasks,
                                  kinds=load_plugins(self.settings.plugins).kinds())
        except PlanInvalid as exc:
            return {"valid": False, "errors": exc.errors, "waves": [], "critical_path": [],
                    "estimated_cost_usd": None}
        deps = valid.deps()
        return {"valid": True, "errors": [], "waves": waves(deps), "critical_path": critical_path(deps),
                "estimated_cost_usd": shown_usd(estimate_cost(valid, self.settings, self.state.executor.price_of))}

    def planner_worst_case(self, prompt: str, context: list[dict[str, str]] | None = None) -> float:
        """The most the planner's call for this request may cost (what it reserves)."""
        model = self.settings.planner_model
        max_tokens = self.settings.model_config_for(model).max_tokens or self.settings.planner_max_tokens
        messages = render("decompose", request=prompt, max_subtasks=self.settings.max_subtasks, context=context)
        return worst_case_usd(messages, max_tokens, self.state.executor.price_of(model))
