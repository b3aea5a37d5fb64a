"""Subtasks that act (design.md section 11): the bounded tool loop of a subtask with
`tools` (model turns and tool calls), and the direct call of a subtask of kind "tool".

Every step is recorded so that a crash never repeats a side effect silently. A model
turn is reserved and settled like every call (calls.py) and its text and tool calls are
kept on its ledger row; a tool call's intent is written before it is sent and its
outcome when it ends, under an idempotency key derived from the task, the subtask and
the call's content (sent to the server in `_meta` too). A resumed loop replays what the
record has, at no cost; a call found in flight is sent again only when its tool is
idempotent (read-only tools are); else it goes to approval when its server's policy
asks for one, or is `unknown` and the model is told so.

A call whose server's `approval` policy asks for a person is held (`awaiting_approval`,
approvals.py) before it is sent: approved, it is sent (with the arguments approved);
denied, the model reads the refusal as the call's result.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from compound.core.errors import BudgetExceeded, ProviderError, ToolError, ToolTimedOut
from compound.core.logging import get_logger
from compound.core.settings import Settings
from compound.executor.approvals import Approvals
from compound.executor.bounds import CallBounds, call_signature
from compound.executor.calls import AttemptCounter, CallSpec, ModelCalls, clean_text
from compound.llm.base import Completion, Message, ToolCall, ToolChoice, ToolSpec, Usage
from compound.store.base import RunStore
from compound.store.models import TERMINAL_TOOL_CALL, CallKind, CallStatus, ToolCallStatus
from compound.store.values import SubState, TaskState, ToolCallRecord
from compound.tools.catalogue import Tool, Tools

log = get_logger("compound.executor")
IDEMPOTENCY_META_KEY = "idempotency_key"  # the key's name in a call's `_meta`
IN_DOUBT = ("this call was in flight when the process stopped; it may or may not have happened, and it was "
            "not sent again (the tool is not marked idempotent)")
UNAVAILABLE_DESCRIPTION = "(not in the catalogue now: a call will fail)"


class StepFailed(Exception):
    """A direct tool call that did not give a result: the subtask fails with `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class LoopResult:
    text: str
    partial_reason: str | None  # why the loop stopped early; None when the model answered


class InDoubt(Protocol):
    """What becomes of a call found in flight after a crash: "resend" it under the same
    key, or not ("unknown": it goes to approval when its server's policy asks for one,
    else it stays unknown and the model is told)."""

    async def decide(self, st: TaskState, sub: SubState, call: ToolCallRecord,
                     tool: Tool | None) -> Literal["resend", "unknown"]: ...


class IdempotentOnly:
    """The default: sent again only when the tool is idempotent or read-only."""

    async def decide(self, st: TaskState, sub: SubState, call: ToolCallRecord,  # noqa: ARG002
                     tool: Tool | None) -> Literal["resend", "unknown"]:
        return "resend" if tool is not None and (tool.idempotent or tool.read_only) else "unknown"


def call_key(task_id: str, index: int, tool: str, arguments: dict[str, Any], occurrence: int) -> str:
    """A tool call's idempotency key: the task, the subtask and what the call does (the
    n-th call of the same tool with the same arguments in this subtask), never where it
    sits in a run, so a replay derives the same key."""
    canon = json.dumps([task_id, index, tool, arguments, occurrence], sort_keys=True, separators=(",", ":"))
    return "tc_" + hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def cut(text: str, limit: int) -> str:
    """A tool result as kept: at most `limit` characters, saying how much was cut, and
    safe for the store (a NUL or a lone surrogate replaced)."""
    text = clean_text(text)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[cut: {len(text) - limit} more characters]"


class ToolSteps:
    """Runs the acting subtasks of the executor's tasks; `tools()` gives the current
    catalogue and calls (the executor's ToolServers), None when no server is configured."""

    def __init__(self, *, settings: Settings, store: RunStore, calls: ModelCalls,
                 tools: Callable[[], Tools | None], in_doubt: InDoubt | None = None) -> None:
        self.settings = settings
        self.store = store
        self.calls = calls
        self.tools = tools
        self.in_doubt = in_doubt or IdempotentOnly()
        self.approvals = Approvals(store=store, timeout_s=settings.approval_timeout_s)

    def needs_approval(self, name: str, tool: Tool | None) -> bool:
        """Whether a call of `name` waits for a person (its server's `approval` policy)."""
        config = self.settings.mcp_servers.get(name.partition(".")[0])
        return tool is not None and config is not None and config.needs_approval(read_only=tool.read_only)

    # kind "tool" -----------------------------------------------------------------------

    async def run_direct(self, st: TaskState, sub: SubState) -> SubState:
        """One call of `sub.tool` with `sub.arguments`, no model: the subtask completed
        with its result (the call's outcome and the completion are one write), or
        StepFailed naming why there is none."""
        if not sub.tool:
            raise StepFailed("a subtask of kind \"tool\" names no tool")
        call = _Calls(self, st, sub, await self._recorded(st, sub), completes=True)
        text, is_error = await call.run(turn=0, model_call_id=None, name=sub.tool, arguments=dict(sub.arguments or {}))
        if is_error:
            raise StepFailed(f"{sub.tool}: {text}")
        if call.completed is not None:
            return call.completed
        return await self.store.complete_subtask(st.id, sub.index, result=text)  # a replayed outcome

    # the loop --------------------------------------------------------------------------

    async def run_loop(self, st: TaskState, sub: SubState, messages: list[Message], *, models: list[str],
                       max_tokens: int, daily: float | None) -> LoopResult:
        """Model turns and tool calls until the model answers in text or a bound is
        reached; then one last turn without tools (if it fits the budget) writes the
        answer. BudgetExceeded only when not even the first turn fits."""
        s = self.settings
        specs = tuple(self._spec(name) for name in sub.tools)
        calls = _Calls(self, st, sub, await self._recorded(st, sub))
        paid = [] if st.status == "queued" else await self._paid_turns(st.id, sub.index)
        counter = AttemptCounter(sub.attempts)
        msgs: list[Message] = list(messages)
        bounds = CallBounds(s.tool_max_calls, s.tool_max_calls_per_tool)
        turns = 0
        reason: str | None = None
        last_text = ""
        seen: list[tuple[str, str]] = []  # (tool, result) of every call, for an answer without a last turn

        async def turn(choice: ToolChoice) -> Completion:
            if paid:
                return paid.pop(0)
            return await self.calls.call(st, CallSpec(
                kind=CallKind.subtask, subtask=sub.index, tier=sub.tier_assigned, models=models, messages=msgs,
                max_tokens=max_tokens, tools=specs, tool_choice=choice, turn=True, counter=counter), daily=daily)

        budget_out = False  # no last turn: the budget is spent, or the model fails
        while reason is None:
            if turns >= s.tool_max_turns:
                reason = f"the limit of {s.tool_max_turns} model turns was reached"
                break
            try:
                out = await turn("auto")
            except BudgetExceeded as exc:
                if turns == 0:
                    raise
                reason, budget_out = f"budget exhausted ({exc.message})", True
                break
            except ProviderError as exc:  # after its retries and fallbacks
                if turns == 0:
                    raise
                reason, budget_out = f"the model failed ({exc.message})", True
                break
            turns += 1
            last_text = out.text or last_text
            if not out.tool_calls:
                return LoopResult(out.text, None)
            msgs.append({"role": "assistant", "content": out.text, "tool_calls": list(out.tool_calls)})
            reason = await _answer_calls(calls, turns, out.tool_calls, bounds, msgs, seen)
        assert reason is not None
        log.info("tool loop stopped early", task_id=st.id, subtask=sub.index, reason=reason, turns=turns,
                 tool_calls=bounds.made)
        if budget_out:
            return LoopResult(_kept(last_text, seen), reason)
        return await _last_turn(turn, reason, _kept(last_text, seen))

    # helpers ---------------------------------------------------------------------------

    def _spec(self, name: str) -> ToolSpec:
        tools = self.tools()
        try:
            tool = tools.tool(name) if tools is not None else None
        except ToolError:
            tool = None
        if tool is None:
            return ToolSpec(name=name, description=UNAVAILABLE_DESCRIPTION)
        return ToolSpec(name=name, description=tool.description, input_schema=dict(tool.input_schema)
                        or {"type": "object", "properties": {}})

    async def _recorded(self, st: TaskState, sub: SubState) -> dict[str, ToolCallRecord]:
        if st.status == "queued":
            return {}
        return {r.id: r for r in await self.store.tool_calls(st.id, sub.index)}

    async def _paid_turns(self, task_id: str, index: int) -> list[Completion]:
        """The loop's turns paid for before a restart, in order: replayed at no cost."""
        rows = await self.store.ledger_rows(task_id)
        out = []
        for r in rows:
            if r["kind"] != CallKind.subtask or r["subtask_index"] != index or r["status"] != CallStatus.ok \
                    or r["answer"] is None:
                continue
            data = json.loads(r["answer"])
            out.append(Completion(text=data["text"], model=r["model"], usage=Usage(), cost_usd=0.0, tool_calls=tuple(
                ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in data["tool_calls"])))
        return out


def _kept(last_text: str, seen: Sequence[tuple[str, str]]) -> str:
    """An answer when the loop could not write one: the model's last words and what the
    tools returned (nothing is thrown away)."""
    parts = [last_text.strip()] if last_text.strip() else []
    parts += [f"[{name}] {text}" for name, text in seen]
    return "\n\n".join(parts) or "(no answer: the loop stopped before the model wrote one)"


def _replayed(rec: ToolCallRecord) -> tuple[str, bool]:
    """A call that ended before, as the model reads it again."""
    if rec.status == ToolCallStatus.ok:
        return rec.result or "", False
    if rec.status == ToolCallStatus.denied:
        return f"the call was not run: {rec.error or 'denied'}", True
    return rec.error or IN_DOUBT, True


def _taken_up(rec: ToolCallRecord) -> bool:
    """An approved call the run has not taken up since (a `running` row whose intent was
    not written after the decision): it was never sent."""
    return (rec.status == ToolCallStatus.running and rec.decision == "approved" and rec.decided_at is not None
            and rec.started_at is not None and rec.started_at <= rec.decided_at)


async def _at_once(calls: _Calls, turn: int, asked: list[ToolCall]) -> list[tuple[str, bool]]:
    """The calls of one turn, all at once (each recorded and bounded on its own); their
    outcomes in the order asked. Their keys follow that order too: each call takes its
    key before its first wait. One failing otherwise than by an error result cancels
    the others."""
    if len(asked) == 1:
        tc = asked[0]
        return [await calls.run(turn=turn, model_call_id=tc.id, name=tc.name, arguments=tc.arguments)]
    try:
        async with asyncio.TaskGroup() as group:
            running = [group.create_task(calls.run(turn=turn, model_call_id=tc.id, name=tc.name,
                                                   arguments=tc.arguments)) for tc in asked]
    except ExceptionGroup as failed:  # as if the calls had run one by one: the first failure
        raise failed.exceptions[0] from None
    return [t.result() for t in running]


async def _answer_calls(calls: _Calls, turn: int, asked: Sequence[ToolCall], bounds: CallBounds,
                        msgs: list[Message], seen: list[tuple[str, str]]) -> str | None:
    """One turn's calls: admitted in order against the bounds, then run at once; their
    answers go into `msgs` in the order the model asked for them, and what each call
    returned into `seen`. The bound that refused a call (which stops the loop), else None."""
    reason: str | None = None
    answers: list[Message | ToolCall] = []
    for tc in asked:
        reason = reason or bounds.refuses(tc)
        if reason is not None:
            # every call the model asked for gets an answer (providers require one)
            answers.append({"role": "tool", "content": f"not run: {reason}", "tool_call_id": tc.id,
                            "is_error": True})
            continue
        answers.append(tc)
    ran = await _at_once(calls, turn, [a for a in answers if isinstance(a, ToolCall)])
    for a in answers:
        if isinstance(a, ToolCall):
            text, is_error = ran.pop(0)
            seen.append((a.name, text))
            msgs.append({"role": "tool", "content": text, "tool_call_id": a.id, "is_error": is_error})
        else:
            msgs.append(a)
    return reason


class _Calls:
    """The tool calls of one subtask's run: recorded, replayed, or sent."""

    def __init__(self, steps: ToolSteps, st: TaskState, sub: SubState, recorded: dict[str, ToolCallRecord], *,
                 completes: bool = False) -> None:
        self.steps, self.st, self.sub, self.recorded = steps, st, sub, recorded
        self.occurrences: Counter[str] = Counter()
        # a direct call: an ok outcome completes the subtask in the same write (`completed`)
        self.completes = completes
        self.completed: SubState | None = None

    async def run(self, *, turn: int, model_call_id: str | None, name: str,
                  arguments: dict[str, Any]) -> tuple[str, bool]:
        """(the text the model reads, whether it is an error result)."""
        steps, st, sub = self.steps, self.st, self.sub
        sig = call_signature(name, arguments)
        key = call_key(st.id, sub.index, name, arguments, self.occurrences[sig])
        self.occurrences[sig] += 1
        tools = steps.tools()
        try:
            tool = tools.tool(name) if tools is not None else None
        except ToolError:
            tool = None
        rec = self.recorded.get(key)
        if rec is not None and rec.status in TERMINAL_TOOL_CALL:
            return _replayed(rec)
        fresh = ToolCallRecord(id=key, subtask=sub.index, turn=turn, model_call_id=model_call_id, tool=name,
                               arguments=arguments, status=ToolCallStatus.awaiting_approval)
        if rec is not None and rec.status == ToolCallStatus.running and not _taken_up(rec):
            # in flight when the process stopped
            if await steps.in_doubt.decide(st, sub, rec, tool) == "unknown":
                if not steps.needs_approval(name, tool):
                    await steps.store.tool_call_ended(st.id, key, status=ToolCallStatus.unknown, result=None,
                                                      error=IN_DOUBT)
                    return IN_DOUBT, True
                rec = await steps.store.tool_call_held(st.id, fresh)  # goes to approval
        elif rec is None and steps.needs_approval(name, tool):
            rec = await steps.store.tool_call_held(st.id, fresh)
        elif rec is not None and rec.status == ToolCallStatus.awaiting_approval:
            await steps.store.tool_call_held(st.id, rec, write=False)  # a resumed run waits again
        if rec is not None and (rec.status == ToolCallStatus.awaiting_approval or _taken_up(rec)):
            rec = await steps.approvals.decision(st.id, rec)
            if rec.status == ToolCallStatus.denied:
                return _replayed(rec)
        if rec is not None:
            arguments = rec.sent_arguments  # the arguments approved, else the model's
        # A fresh task's loop call: its model turn's reservation has the subtask running
        # (a resumed run may replay that turn from the record instead).
        acting = self.completes or rec is not None or st.status != "queued"
        await steps.store.tool_call_started(st.id, replace(fresh, arguments=arguments, status=ToolCallStatus.running)
                                            if rec is None else replace(rec, status=ToolCallStatus.running),
                                            acting=acting)
        status, result, error = await self._send(tools, name, arguments, key)
        if status == ToolCallStatus.ok and self.completes:
            self.completed = await steps.store.tool_call_completed(st.id, key, result=result or "")
            return result or "", False
        # The loop's next write (the next call's intent, the next turn's reservation)
        # commits after it. A crash before it commits leaves the call in flight: the
        # rules for a call found in flight apply.
        await steps.calls.write_behind(st.id, steps.store.tool_call_ended(st.id, key, status=status, result=result,
                                                                          error=error))
        if status == ToolCallStatus.ok:
            return result or "", False
        return error or "", True

    async def _send(self, tools: Tools | None, name: str, arguments: dict[str, Any],
                    key: str) -> tuple[ToolCallStatus, str | None, str | None]:
        """Sends the call under `key` (an error when no server is configured): (its status,
        its result, its error); a result or a tool's error text is cut to
        `tool_result_max_chars`."""
        limit = self.steps.settings.tool_result_max_chars
        if tools is None:
            return ToolCallStatus.error, None, f"no MCP server is configured: {name} cannot be called"
        server, _, tool_name = name.partition(".")
        try:
            got = await tools.call(server, tool_name, arguments, meta={IDEMPOTENCY_META_KEY: key})
        except ToolTimedOut as exc:
            return ToolCallStatus.timeout, None, clean_text(exc.message)
        except ToolError as exc:  # unknown, or its server unavailable: the call did not happen
            return ToolCallStatus.error, None, clean_text(exc.message)
        if got.is_error:
            return ToolCallStatus.error, None, cut(got.text, limit) or "the tool reported an error"
        return ToolCallStatus.ok, cut(got.text, limit), None


async def _last_turn(turn: Callable[[ToolChoice], Awaitable[Completion]], reason: str,
                     kept: str) -> LoopResult:
    """A loop stopped early: one last turn without tools writes the answer; when it does
    not fit the budget or fails, the answer is what was kept (`kept`)."""
    try:
        out = await turn("none")
        if out.text.strip():
            return LoopResult(out.text, reason)
    except BudgetExceeded as exc:
        reason = f"{reason}; the last turn without tools did not fit the budget ({exc.message})"
    except ProviderError as exc:
        reason = f"{reason}; the last turn without tools failed ({exc.message})"
    return LoopResult(kept, reason)
