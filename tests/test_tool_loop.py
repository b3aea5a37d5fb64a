"""Subtasks that act: the bounded tool loop, the direct tool call, their record and
their replay after a crash (executor/steps.py). A scripted model at the LLMClient seam
asks for tools in the seam's own shapes; tools are a fake at the Tools seam here and the
fixture MCP server in tests/test_tool_loop_mcp.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from compound.core.errors import PlanInvalid, ProviderError, ToolTimedOut, UnknownTool
from compound.core.money import Usage
from compound.core.settings import Settings
from compound.executor.service import Executor
from compound.executor.steps import IDEMPOTENCY_META_KEY, IN_DOUBT, call_key
from compound.llm.base import Completion, Message, Price, ToolCall, ToolChoice, ToolSpec
from compound.planner.validate import validate_plan
from compound.store.base import RunStore
from compound.store.models import SubtaskStatus, TaskStatus, ToolCallStatus
from compound.store.values import SubState, ToolCallRecord
from compound.tools.catalogue import Tool, ToolResult

PRICE = Price(input=1e-6, output=5e-6)


# the model ---------------------------------------------------------------------------------


@dataclass
class Turn:
    messages: list[Message]
    tools: list[str]
    tool_choice: ToolChoice


Script = Callable[[list[Message], ToolChoice], Completion | str]


@dataclass
class ScriptedLLM:
    """Answers each call with `script(messages, tool_choice)`: a text, or a Completion
    with tool calls. `gate(n)` may return an Event the n-th call (0-based) waits for.
    Usage: 1 token per 4 bytes in; `out_tokens` out (what makes a turn cost)."""

    script: Script
    out_tokens: int = 10
    turns: list[Turn] = field(default_factory=list)
    gates: dict[int, asyncio.Event] = field(default_factory=dict)
    entered: dict[int, asyncio.Event] = field(default_factory=dict)

    def gate(self, n: int) -> asyncio.Event:
        self.entered[n] = asyncio.Event()
        self.gates[n] = asyncio.Event()
        return self.gates[n]

    async def warm(self) -> None:
        """Nothing to warm."""

    async def aclose(self) -> None:
        """Nothing held."""

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None = None, timeout_s: float | None = None,
                       tools: Sequence[ToolSpec] | None = None, tool_choice: ToolChoice = "auto") -> Completion:
        n = len(self.turns)
        self.turns.append(Turn(list(messages), [t.name for t in tools or ()], tool_choice))
        if n in self.gates:
            self.entered[n].set()
            await self.gates[n].wait()
        out = self.script(messages, tool_choice)
        usage = Usage(input_tokens=sum(len(m["content"]) for m in messages) // 4,
                      output_tokens=min(max_tokens, self.out_tokens))
        if isinstance(out, str):
            return Completion(text=out, model=model, usage=usage, cost_usd=PRICE.cost(usage))
        return Completion(text=out.text, model=model, usage=usage, cost_usd=PRICE.cost(usage),
                          tool_calls=out.tool_calls)

    def stream(self, **kw: Any) -> Any:  # pragma: no cover - tool turns are not streamed
        raise AssertionError("not streamed")


def asks(*calls: tuple[str, dict[str, Any]], text: str = "") -> Completion:
    """A turn that asks for tools."""
    return Completion(text=text, model="", usage=Usage(), cost_usd=0.0, tool_calls=tuple(
        ToolCall(id=f"call_{k}_{name}", name=name, arguments=args) for k, (name, args) in enumerate(calls)))


def tool_messages(messages: Sequence[Message]) -> list[Message]:
    return [m for m in messages if m["role"] == "tool"]


# the tools ---------------------------------------------------------------------------------


@dataclass
class FakeTools:
    """fx.echo (read-only), fx.count (not idempotent), fx.wait (waits for `release`; an
    in-flight call can be cut by crash or cancel), fx.slow (times out)."""

    calls: list[tuple[str, dict[str, Any], Mapping[str, Any] | None]] = field(default_factory=list)
    count: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: int = 0

    def catalogue(self) -> list[Tool]:
        return [self.tool(f"fx.{n}") for n in ("echo", "count", "wait", "slow")]

    def tool(self, name: str) -> Tool:
        server, _, tool = name.partition(".")
        if server != "fx" or tool not in ("echo", "count", "wait", "slow"):
            raise UnknownTool(f"no tool {name!r}", tool=name)
        ro = tool == "echo"
        return Tool(server="fx", tool=tool, description=f"the {tool} tool", arguments=("text",),
                    input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
                    read_only=ro, idempotent=ro, available=True)

    async def call(self, server: str, tool: str, arguments: Mapping[str, Any] | None = None, *,
                   timeout_s: float | None = None, meta: Mapping[str, Any] | None = None) -> ToolResult:
        name = f"{server}.{tool}"
        self.tool(name)
        args = dict(arguments or {})
        self.calls.append((name, args, meta))
        if tool == "count":
            self.count += 1
            return ToolResult(name, str(self.count), False)
        if tool == "wait":
            self.waiting.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return ToolResult(name, "waited", False)
        if tool == "slow":
            raise ToolTimedOut(f"{name} gave no result within 0.1 s; the call was cancelled", tool=name,
                               timeout_s=0.1)
        return ToolResult(name, str(args.get("text", "")), False)


# running -----------------------------------------------------------------------------------


def plan(*subtasks: dict[str, Any]) -> dict[str, Any]:
    return {"subtasks": [{"description": f"step {k}", "tier_hint": 1, **s} for k, s in enumerate(subtasks)]}


def executor(store: RunStore, llm: ScriptedLLM, tools: FakeTools | None, **settings: Any) -> Executor:
    return Executor(settings=Settings(database_url=store.url, **{"max_replans": 0, **settings}), store=store, client=llm,
                    price_of=lambda _m: PRICE, tools=tools)


async def run(store: RunStore, llm: ScriptedLLM, tools: FakeTools | None, the_plan: dict[str, Any], *,
              budget: float = 1.0, **settings: Any) -> dict[str, Any]:
    ex = executor(store, llm, tools, **settings)
    st = await store.create_task(prompt="check the providers", budget_usd=budget, plan_in=the_plan)
    await ex.start()
    try:
        ex.submit(st.id)
        await ex.wait(st.id, timeout=60)
    finally:
        await ex.stop()
    return await store.snapshot(st.id)


async def ledger_total(store: RunStore, task_id: str) -> float:
    return sum(float(r["cost_usd"]) for r in await store.ledger_rows(task_id))


# the loop ----------------------------------------------------------------------------------


async def test_a_loop_calls_tools_and_completes_with_every_call_recorded(any_store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        if not done:
            return asks(("fx.echo", {"text": "status: ok"}), ("fx.count", {}))
        return "the status page says " + done[0]["content"] + f"; {len(done)} results"

    llm, tools = ScriptedLLM(script), FakeTools()
    snap = await run(any_store, llm, tools, plan({"tools": ["fx.echo", "fx.count"]}))
    assert snap["status"] == "completed", snap
    sub = snap["subtasks"][0]
    assert sub["status"] == "completed" and sub["partial_reason"] is None
    assert sub["result"] == "the status page says status: ok; 2 results" == snap["result"]
    assert sub["kind"] == "llm" and sub["tools"] == ["fx.echo", "fx.count"]
    # the turn's two calls ran at once: the snapshot lists them in the order they started
    assert sorted((c["tool"], c["arguments"], c["status"], c["result"]) for c in sub["tool_calls"]) == [
        ("fx.count", {}, "ok", "1"), ("fx.echo", {"text": "status: ok"}, "ok", "status: ok")]
    assert all(c["started_at"] and c["completed_at"] and c["error"] is None for c in sub["tool_calls"])
    # the model saw the tools, and each result went back under its call's id
    assert llm.turns[0].tools == ["fx.echo", "fx.count"] and len(llm.turns) == 2
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages(llm.turns[1].messages)] == [
        ("call_0_fx.echo", "status: ok"), ("call_1_fx.count", "1")]
    # each call carried its idempotency key in _meta, the id the snapshot shows
    assert sorted(m[IDEMPOTENCY_META_KEY] for _, _, m in tools.calls if m) == sorted(c["id"] for c in sub["tool_calls"])
    # both turns are in the ledger, and nothing else
    rows = await any_store.ledger_rows(snap["id"])
    assert [(r["kind"], r["status"]) for r in rows] == [("subtask", "ok"), ("subtask", "ok")]
    assert sub["attempts"] == 2
    # every tool call is an event: its intent, then its outcome
    events = await any_store.events_after(snap["id"], 0)
    shown = [(e.data["tool"], e.data["status"]) for e in events if e.kind == "tool_call"]
    assert len(shown) == 4  # the two calls of the turn ran at once: each its intent, then its outcome
    assert [s for s in shown if s[0] == "fx.echo"] == [("fx.echo", "running"), ("fx.echo", "ok")]
    assert [s for s in shown if s[0] == "fx.count"] == [("fx.count", "running"), ("fx.count", "ok")]


async def test_a_calls_intent_starts_its_subtask_only_when_asked_to(any_store: RunStore) -> None:
    """A direct or decided call's intent has its subtask running; a loop call's leaves
    the subtask as its model turn left it (the reservation has it running)."""
    st = await any_store.create_task(prompt="p", budget_usd=1.0)
    subs = [SubState(index=i, description=f"step {i}", tier_hint=1, tier_assigned=1, models=["m"], depends_on=[],
                     status=SubtaskStatus.pending, kind="tool", tool="fx.echo", arguments={}) for i in range(2)]
    await any_store.save_plan(st.id, reasoning=None, subtasks=subs, prompt_versions={}, status=TaskStatus.planned)
    for i, acting in ((0, True), (1, False)):
        await any_store.tool_call_started(st.id, ToolCallRecord(
            id=f"tc_{i}", subtask=i, turn=0, model_call_id=None, tool="fx.echo", arguments={"text": str(i)},
            status=ToolCallStatus.running), acting=acting)
    snap = await any_store.snapshot(st.id)
    assert [s["status"] for s in snap["subtasks"]] == ["running", "pending"]
    assert [[c["status"] for c in s["tool_calls"]] for s in snap["subtasks"]] == [["running"], ["running"]]
    events = await any_store.events_after(st.id, 0)
    assert [(e.data["index"], e.data["status"]) for e in events if e.kind == "subtask"] == [(0, "running")]
    assert [e.data["index"] for e in events if e.kind == "tool_call"] == [0, 1]


def echo_once(messages: list[Message], _choice: ToolChoice) -> Completion | str:
    done = tool_messages(messages)
    return f"echoed {done[0]['content']}" if done else asks(("fx.echo", {"text": "hi"}))


async def test_a_calls_outcome_commits_while_the_loop_goes_on_and_the_task_ends_after_it(
        store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that commits in order lets the loop ask for the model's next turn before
    a call's outcome has committed; the task ends only once it has."""
    held = asyncio.Event()
    real = store.tool_call_ended

    async def held_outcome(*args: Any, **kw: Any) -> Any:
        await held.wait()
        return await real(*args, **kw)

    monkeypatch.setattr(store, "tool_call_ended", held_outcome)
    llm, tools = ScriptedLLM(echo_once), FakeTools()
    second = llm.gate(1)
    ex = executor(store, llm, tools)
    st = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan({"tools": ["fx.echo"]}))
    await ex.start()
    try:
        ex.submit(st.id)
        await asyncio.wait_for(llm.entered[1].wait(), 20)  # the next turn is asked for ...
        during = await store.snapshot(st.id)
        assert [c["status"] for c in during["subtasks"][0]["tool_calls"]] == ["running"]  # ... before the outcome
        second.set()
        async with asyncio.timeout(20):
            while (await store.snapshot(st.id))["subtasks"][0]["status"] != "completed":
                await asyncio.sleep(0.01)
        assert (await store.snapshot(st.id))["status"] == "executing"  # the task's end waits for the outcome
        held.set()
        await ex.wait(st.id, timeout=60)
    finally:
        await ex.stop()
    snap = await store.snapshot(st.id)
    assert snap["status"] == "completed" and snap["result"] == "echoed hi"
    assert [c["status"] for c in snap["subtasks"][0]["tool_calls"]] == ["ok"]


async def test_an_outcome_that_cannot_be_written_fails_the_task(store: RunStore,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_args: Any, **_kw: Any) -> Any:
        raise OSError("disk I/O error")

    monkeypatch.setattr(store, "tool_call_ended", broken)
    snap = await run(store, ScriptedLLM(echo_once), FakeTools(), plan({"tools": ["fx.echo"]}))
    assert snap["status"] == "failed" and snap["error"] == "internal error: OSError", snap
    assert snap["end_reason"] == "internal"


async def test_the_calls_of_one_turn_run_at_once_and_answer_in_the_order_asked(store: RunStore) -> None:
    class Gathering(FakeTools):
        """fx.wait holds every call until both of the turn's calls are in flight."""

        both_in = asyncio.Event()

        async def call(self, server: str, tool: str, arguments: Mapping[str, Any] | None = None, *,
                       timeout_s: float | None = None, meta: Mapping[str, Any] | None = None) -> ToolResult:
            if tool == "wait":
                self.calls.append((f"{server}.{tool}", dict(arguments or {}), meta))
                if sum(1 for c in self.calls if c[0] == "fx.wait") == 2:
                    self.both_in.set()
                await self.both_in.wait()  # called one after the other, the first would wait for ever
                return ToolResult("fx.wait", f"waited {dict(arguments or {})['text']}", False)
            return await super().call(server, tool, arguments, timeout_s=timeout_s, meta=meta)

    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        if not done:
            return asks(("fx.wait", {"text": "a"}), ("fx.wait", {"text": "b"}), ("fx.echo", {"text": "c"}))
        return "; ".join(m["content"] for m in done)

    llm, tools = ScriptedLLM(script), Gathering()
    snap = await asyncio.wait_for(run(store, llm, tools, plan({"tools": ["fx.wait", "fx.echo"]})), 30)
    assert snap["status"] == "completed", snap
    assert snap["subtasks"][0]["result"] == "waited a; waited b; c"  # in the order the model asked
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages(llm.turns[1].messages)] == [
        ("call_0_fx.wait", "waited a"), ("call_1_fx.wait", "waited b"), ("call_2_fx.echo", "c")]
    calls = snap["subtasks"][0]["tool_calls"]
    assert sorted((c["arguments"]["text"], c["status"]) for c in calls) == [("a", "ok"), ("b", "ok"), ("c", "ok")]
    # each call kept its own record and key
    assert sorted(m[IDEMPOTENCY_META_KEY] for _, _, m in tools.calls if m) == sorted(c["id"] for c in calls)
    assert len({c["id"] for c in calls}) == 3


@pytest.mark.parametrize(("bounds", "asked", "reason", "ran"), [
    ({"tool_max_turns": 2}, lambda n: asks(("fx.echo", {"text": f"t{n}"})),
     "the limit of 2 model turns was reached", 2),
    ({"tool_max_calls": 3}, lambda n: asks(("fx.echo", {"text": f"a{n}"}), ("fx.echo", {"text": f"b{n}"})),
     "the limit of 3 tool calls was reached", 3),
    ({"tool_max_calls_per_tool": 2}, lambda n: asks(("fx.count", {}), ("fx.echo", {"text": f"e{n}"})),
     "the limit of 2 calls of fx.count was reached", 4),
    ({}, lambda _n: asks(("fx.echo", {"text": "same"})),
     "the same call of fx.echo was asked for three times in a row", 2),
])
async def test_caps_end_the_loop_with_a_last_turn_without_tools_and_a_partial_mark(
        store: RunStore, bounds: dict[str, Any], asked: Callable[[int], Completion], reason: str, ran: int) -> None:
    def script(messages: list[Message], choice: ToolChoice) -> Completion | str:
        if choice == "none":
            return f"an answer from {len(tool_messages(messages))} results"
        return asked(sum(1 for m in messages if m["role"] == "assistant"))

    llm, tools = ScriptedLLM(script), FakeTools()
    snap = await run(store, llm, tools, plan({"tools": ["fx.echo", "fx.count"]}), **bounds)
    sub = snap["subtasks"][0]
    assert snap["status"] == "completed" and sub["status"] == "completed", snap
    assert sub["partial_reason"] == reason
    assert len(tools.calls) == ran and len(sub["tool_calls"]) == ran
    # the last turn was told to answer, and every call asked for got a result (run or not)
    assert llm.turns[-1].tool_choice == "none" and llm.turns[-1].tools == ["fx.echo", "fx.count"]
    asked_ids = [c.id for m in llm.turns[-1].messages for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in tool_messages(llm.turns[-1].messages)]
    assert answered == asked_ids and sub["result"].startswith("an answer from")
    assert f"not run: {reason}" in [m["content"] for m in tool_messages(llm.turns[-1].messages)] \
        or reason.startswith("the limit of 2 model turns")
    events = await store.events_after(snap["id"], 0)
    assert any(e.kind == "subtask" and e.data.get("partial_reason") == reason for e in events)


async def test_tool_errors_and_timeouts_go_back_to_the_model(store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        if not done:
            return asks(("fx.slow", {}), ("fx.nope", {}))
        return " | ".join(f"{m['content']} (error: {m.get('is_error')})" for m in done)

    tools = FakeTools()
    snap = await run(store, ScriptedLLM(script), tools, plan({"tools": ["fx.slow", "fx.nope"]}))
    sub = snap["subtasks"][0]
    assert sub["status"] == "completed" and sub["partial_reason"] is None
    assert [(c["tool"], c["status"]) for c in sub["tool_calls"]] == [("fx.slow", "timeout"), ("fx.nope", "error")]
    assert "gave no result within 0.1 s; the call was cancelled (error: True)" in sub["result"]
    assert "no tool 'fx.nope' (error: True)" in sub["result"]


async def test_a_long_result_is_cut_for_the_model_and_the_snapshot(store: RunStore) -> None:
    long = "x" * 5000

    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        return f"{len(done[0]['content'])}" if done else asks(("fx.echo", {"text": long}))

    snap = await run(store, ScriptedLLM(script), FakeTools(), plan({"tools": ["fx.echo"]}),
                     tool_result_max_chars=1000)
    sub = snap["subtasks"][0]
    kept = "x" * 1000 + "\n[cut: 4000 more characters]"
    assert sub["result"] == str(len(kept))
    assert sub["tool_calls"][0]["result"] == kept  # under the snapshot's own bound (2000)


async def test_a_budget_running_out_mid_loop_keeps_the_ledger_within_it(any_store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        n = sum(1 for m in messages if m["role"] == "assistant")
        return asks(("fx.echo", {"text": f"page {n}"}), text=f"reading page {n}")

    # a turn reserves ~0.0075 (1024 tokens out, the tools' framing) and costs 0.005 (1000 out)
    llm = ScriptedLLM(script, out_tokens=1000)
    budget = 0.014
    snap = await run(any_store, llm, FakeTools(), plan({"tools": ["fx.echo"]}), budget=budget)
    sub = snap["subtasks"][0]
    assert sub["status"] == "completed", snap
    assert sub["partial_reason"] is not None and sub["partial_reason"].startswith("budget exhausted")
    assert len(llm.turns) == 2  # the third turn did not fit, and no last turn was sent
    # nothing is thrown away: the model's last words and every tool result
    assert sub["result"] == "reading page 1\n\n[fx.echo] page 0\n\n[fx.echo] page 1"
    assert await ledger_total(any_store, snap["id"]) <= budget
    assert snap["total_cost_usd"] <= budget


async def test_a_loop_whose_first_turn_does_not_fit_is_skipped_for_budget(store: RunStore) -> None:
    llm = ScriptedLLM(lambda _m, _c: "never")
    snap = await run(store, llm, FakeTools(), plan({"tools": ["fx.echo"]}), budget=0.001)
    assert snap["subtasks"][0]["status"] == "skipped" and "budget" in snap["subtasks"][0]["error"]
    assert llm.turns == [] and snap["total_cost_usd"] == 0


async def test_without_tool_servers_a_call_is_an_error_result(store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        return done[0]["content"] if done else asks(("fx.echo", {"text": "x"}))

    snap = await run(store, ScriptedLLM(script), None, plan({"tools": ["fx.echo"]}))
    assert snap["subtasks"][0]["result"] == "no MCP server is configured: fx.echo cannot be called"


# kind "tool" -------------------------------------------------------------------------------


async def test_a_direct_tool_call_needs_no_model(any_store: RunStore) -> None:
    llm, tools = ScriptedLLM(lambda _m, _c: "unused"), FakeTools()
    snap = await run(any_store, llm, tools, plan(
        {"kind": "tool", "tool": "fx.echo", "arguments": {"text": "hello"}},
        {"kind": "tool", "tool": "fx.count", "depends_on": [0]},
        {"kind": "tool", "tool": "fx.slow", "arguments": {}}))
    subs = snap["subtasks"]
    assert [s["status"] for s in subs] == ["completed", "completed", "failed"]
    assert subs[0]["result"] == "hello" and subs[1]["result"] == "1" and subs[0]["kind"] == "tool"
    assert "fx.slow: fx.slow gave no result within 0.1 s" in subs[2]["error"]
    assert [c["status"] for s in subs for c in s["tool_calls"]] == ["ok", "ok", "timeout"]
    # no model was called for the subtasks; the synthesis joins them
    assert len(llm.turns) == 1 and [r["kind"] for r in await any_store.ledger_rows(snap["id"])] == ["synthesis"]
    echo = next(meta for name, _, meta in tools.calls if name == "fx.echo")
    assert echo == {IDEMPOTENCY_META_KEY: call_key(snap["id"], 0, "fx.echo", {"text": "hello"}, 0)}
    # a direct call's subtask is running from its call's intent, before the call's event
    events = [(e.kind, e.data["status"]) for e in await any_store.events_after(snap["id"], 0)
              if e.data.get("index") == 0]
    assert events == [("subtask", "running"), ("tool_call", "running"), ("tool_call", "ok"), ("subtask", "completed")]
    assert subs[0]["started_at"] is not None


@pytest.mark.parametrize(("subtask", "error"), [
    ({"kind": "tool"}, 'subtask 0 is of kind "tool" but names no tool: set "tool" to the tool to call (server.tool)'),
    ({"kind": "tool", "tool": "nodot"}, "subtask 0 names tool 'nodot'; a tool is named server.tool"),
    ({"tool": "fx.echo"}, 'subtask 0 names tool \'fx.echo\' but is of kind "llm"; set "kind": "tool"'),
    ({"kind": "shell"}, 'subtask 0 has kind \'shell\'; it must be "llm" or "tool"'),
    ({"tools": ["echo"]}, "subtask 0 names tool 'echo'; a tool is named server.tool"),
    ({"tools": "fx.echo"}, "subtask 0 has tools 'fx.echo'; it must be a list of tool names"),
    ({"kind": "tool", "tool": "fx.echo", "arguments": [1]},
     'subtask 0 is of kind "tool" and needs "arguments", a JSON object'),
])
def test_a_plan_acting_wrongly_is_refused_with_words_to_act_on(subtask: dict[str, Any], error: str) -> None:
    with pytest.raises(PlanInvalid) as caught:
        validate_plan(plan(subtask), max_subtasks=5)
    assert any(error in e for e in caught.value.errors), caught.value.errors


def test_acting_fields_pass_validation() -> None:
    got = validate_plan(plan({"tools": ["fx.echo", "fx.echo"]}, {"kind": "tool", "tool": "fx.count"}),
                        max_subtasks=5)
    assert got.subtasks[0].tools == ["fx.echo"] and got.subtasks[0].kind == "llm"
    assert (got.subtasks[1].kind, got.subtasks[1].tool, got.subtasks[1].arguments) == ("tool", "fx.count", {})


# cancel, crash, resume ---------------------------------------------------------------------


async def test_cancel_stops_a_tool_call_in_flight(store: RunStore) -> None:
    llm = ScriptedLLM(lambda _m, _c: asks(("fx.wait", {})))
    tools = FakeTools()
    ex = executor(store, llm, tools)
    st = await store.create_task(prompt="p", budget_usd=1.0, plan_in=plan({"tools": ["fx.wait"]}))
    await ex.start()
    try:
        ex.submit(st.id)
        await asyncio.wait_for(tools.waiting.wait(), 20)
        await ex.cancel(st.id)
    finally:
        await ex.stop()
    snap = await store.snapshot(st.id)
    assert snap["status"] == "canceled" and tools.cancelled == 1
    call = snap["subtasks"][0]["tool_calls"][0]
    assert call["status"] == "unknown" and "may or may not have happened" in call["error"]


async def crash_while(store: RunStore, llm: ScriptedLLM, tools: FakeTools, the_plan: dict[str, Any],
                      in_flight: asyncio.Event, **settings: Any) -> str:
    """Run a task until `in_flight` is set, then stop the executor as a crash would (no
    outcome written for what was in flight). Returns the task's id."""
    ex = executor(store, llm, tools, **settings)
    st = await store.create_task(prompt="p", budget_usd=1.0, plan_in=the_plan)
    await ex.start()
    ex.submit(st.id)
    await asyncio.wait_for(in_flight.wait(), 20)
    # A crash, not a stop: the task is cut off and nothing is booked for its calls in
    # flight (Executor.stop would settle them as canceled).
    ex._stopping = True
    cut = list(ex._running.values())
    for t in cut:
        t.cancel()
    await asyncio.gather(*cut, return_exceptions=True)
    return st.id


async def resume(store: RunStore, llm: ScriptedLLM, tools: FakeTools, task_id: str) -> dict[str, Any]:
    ex = executor(store, llm, tools)
    try:
        assert await ex.start() == [task_id]
        await ex.wait(task_id, timeout=60)
    finally:
        await ex.stop()
    return await store.snapshot(task_id)


async def test_a_non_idempotent_call_in_flight_at_a_crash_is_unknown_and_never_sent_again(
        any_store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        return f"told: {done[0]['content']}" if done else asks(("fx.wait", {"n": 1}))

    llm, tools = ScriptedLLM(script), FakeTools()
    task_id = await crash_while(any_store, llm, tools, plan({"tools": ["fx.wait"]}), tools.waiting)
    before = await any_store.snapshot(task_id)
    assert before["subtasks"][0]["tool_calls"][0]["status"] == "running"  # its intent, and no outcome
    paid = await ledger_total(any_store, task_id)

    llm2 = ScriptedLLM(script)
    snap = await resume(any_store, llm2, tools, task_id)
    sub = snap["subtasks"][0]
    assert snap["status"] == "completed" and sub["result"] == f"told: {IN_DOUBT}"
    assert len(tools.calls) == 1  # it ran (or not) once; it was not sent again
    assert [c["status"] for c in sub["tool_calls"]] == ["unknown"]
    # the first turn was replayed from the record: only the turn after it was paid for
    assert len(llm2.turns) == 1 and tool_messages(llm2.turns[0].messages)[0]["is_error"] is True
    rows = await any_store.ledger_rows(task_id)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert await ledger_total(any_store, task_id) == pytest.approx(paid + float(rows[1]["cost_usd"]))


async def test_an_idempotent_call_in_flight_at_a_crash_is_sent_again_under_the_same_key(store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        return f"got {done[0]['content']}" if done else asks(("fx.echo", {"text": "again"}))

    llm, tools = ScriptedLLM(script), FakeTools()
    entered = asyncio.Event()
    real_call = tools.call

    async def hang_first(server: str, tool: str, arguments: Any = None, **kw: Any) -> ToolResult:
        if not entered.is_set():
            entered.set()
            tools.calls.append((f"{server}.{tool}", dict(arguments or {}), kw.get("meta")))
            await asyncio.Event().wait()  # in flight until the crash
        return await real_call(server, tool, arguments, **kw)

    tools.call = hang_first  # type: ignore[method-assign]
    task_id = await crash_while(store, llm, tools, plan({"tools": ["fx.echo"]}), entered)
    snap = await resume(store, ScriptedLLM(script), tools, task_id)
    assert snap["subtasks"][0]["result"] == "got again"
    keys = [m[IDEMPOTENCY_META_KEY] for _, _, m in tools.calls if m]
    assert len(keys) == 2 and keys[0] == keys[1] == snap["subtasks"][0]["tool_calls"][0]["id"]
    assert [c["status"] for c in snap["subtasks"][0]["tool_calls"]] == ["ok"]


async def test_finished_calls_and_turns_are_replayed_after_a_crash_at_no_cost(any_store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        return f"count was {done[0]['content']}" if done else asks(("fx.count", {}))

    llm, tools = ScriptedLLM(script), FakeTools()
    second = llm.gate(1)  # the turn after the tool call hangs until the crash
    del second
    task_id = await crash_while(any_store, llm, tools, plan({"tools": ["fx.count"]}), llm.entered[1])
    paid_before = [r for r in await any_store.ledger_rows(task_id) if r["status"] == "ok"]
    assert len(paid_before) == 1 and tools.count == 1

    llm2 = ScriptedLLM(script)
    snap = await resume(any_store, llm2, tools, task_id)
    assert snap["subtasks"][0]["result"] == "count was 1"
    assert tools.count == 1  # the finished call was replayed from the record
    assert len(llm2.turns) == 1  # and the first turn too: only the turn lost in the crash is sent again
    rows = await any_store.ledger_rows(task_id)
    # The turn cut off is booked (canceled here, where the test cuts the task; `lost` at its
    # worst case after a kill -9, tests/test_tool_loop_mcp.py) and sent again.
    assert [r["status"] for r in rows][0::2] == ["ok", "ok"] and rows[1]["status"] in ("lost", "canceled")
    assert snap["total_cost_usd"] == pytest.approx(round(sum(float(r["cost_usd"]) for r in rows), 6), abs=1e-6)


def test_the_idempotency_key_is_derived_from_the_content() -> None:
    a = call_key("t_1", 0, "fx.count", {"a": 1, "b": 2}, 0)
    assert a == call_key("t_1", 0, "fx.count", {"b": 2, "a": 1}, 0)  # argument order does not matter
    others = {call_key("t_2", 0, "fx.count", {"a": 1, "b": 2}, 0), call_key("t_1", 1, "fx.count", {"a": 1, "b": 2}, 0),
              call_key("t_1", 0, "fx.echo", {"a": 1, "b": 2}, 0), call_key("t_1", 0, "fx.count", {"a": 1}, 0),
              call_key("t_1", 0, "fx.count", {"a": 1, "b": 2}, 1)}
    assert a not in others and len(others) == 5
    assert json.dumps(a).startswith('"tc_')


async def test_a_model_failing_mid_loop_ends_it_with_what_it_has(store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        if tool_messages(messages):
            raise ProviderError("the model is gone", status=400, transient=False)
        return asks(("fx.echo", {"text": "kept"}), text="looking")

    snap = await run(store, ScriptedLLM(script), FakeTools(), plan({"tools": ["fx.echo"]}))
    sub = snap["subtasks"][0]
    assert sub["status"] == "completed" and sub["result"] == "looking\n\n[fx.echo] kept"
    assert sub["partial_reason"] is not None and sub["partial_reason"].startswith("the model failed (")


async def test_a_result_with_a_nul_is_stored_safely(any_store: RunStore) -> None:
    def script(messages: list[Message], _choice: ToolChoice) -> Completion | str:
        done = tool_messages(messages)
        return done[0]["content"] if done else asks(("fx.echo", {"text": "a\x00b\ud800c"}))

    snap = await run(any_store, ScriptedLLM(script), FakeTools(), plan({"tools": ["fx.echo"]}))
    sub = snap["subtasks"][0]
    assert sub["result"] == "a\ufffdb?c" == sub["tool_calls"][0]["result"]  # as calls.clean_text does


async def test_the_api_refuses_a_plan_acting_wrongly_with_every_error(api: Any) -> None:
    bad = plan({"kind": "tool"}, {"tool": "fx.echo"}, {"tools": ["echo"]})
    r = await api.http.post("/v1/tasks", json={"prompt": "p", "plan": bad}, headers=api.auth(api.alice))
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert all(f"subtask {i}" in message for i in range(3)), message
