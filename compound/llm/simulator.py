"""An offline provider simulator speaking the Anthropic Messages API and the OpenAI
Chat Completions API over real HTTP, with scriptable latency, usage, failures and
answers. Bodies are built with the SDKs' own response types, so the wire format is
right by construction. Tests, benchmarks and the README's tour run on it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

KINDS = {
    "You are compound's planner.": "planner",
    "You are compound's worker.": "worker",
    "You are compound's synthesizer.": "synthesizer",
    "You are compound's checker.": "checker",
}


@dataclass
class Failure:
    """One scripted failure: an HTTP status (429, 500, 503, 529, 400, 401 ...) or
    `status=0` for a hang of `hang_s` seconds (the client's timeout fires). With
    `midstream`, a streamed call fails in the middle instead: the answer starts (200)
    and after `after_pieces` pieces comes the provider's error event for `status`
    ("error": Anthropic's `event: error`, OpenAI's `data: {"error": ...}`) or the
    connection drops ("drop"). A call not streamed gets the plain error."""

    status: int
    retry_after: float | None = None
    hang_s: float = 0.0
    model: str | None = None  # only for this model (None: any)
    kind: str | None = None  # only for this prompt kind (None: any)
    message: str | None = None  # the error body's message (default: "simulated error N")
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    midstream: Literal["error", "drop"] | None = None
    after_pieces: int = 1
    text: str | None = None  # only for a request whose text holds this (None: any)
    times: int = 1  # how many matching requests it fails


@dataclass
class ToolUse:
    """A scripted answer that asks for tool calls: each `(name, arguments)` with
    compound's tool name (`server.tool`: sent under the wire name the request gave it; a
    name no offered tool has goes out as it is, as a model's invented name does) and the
    arguments as an object, or as text sent exactly so (malformed JSON on the wire).
    `text` comes before the calls, as a model's words before its tool_use blocks."""

    calls: list[tuple[str, dict[str, Any] | str]]
    text: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolUse:
        return cls(calls=[(str(c["name"]), c.get("arguments", {})) for c in data.get("tool_calls", [])],
                   text=str(data.get("text", "")))


@dataclass
class Reply:
    """What the simulated model answers: text, and the tool calls it asks for as
    (id, wire name, arguments as JSON text)."""

    text: str
    calls: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Script:
    """What the simulator does. Everything is optional; defaults answer at once."""

    latency_s: float = 0.0
    latency: Callable[[str, str, str], float] | None = None  # (model, kind, text) -> s
    failures: list[Failure] = field(default_factory=list)
    # kind -> queued answers: texts, or ToolUse (tool calls). With tools offered and
    # nothing queued, a model calls the first tool once (`example_arguments`), then,
    # once the conversation holds tool results, answers in text quoting them.
    answers: dict[str, list[str | ToolUse]] = field(default_factory=dict)
    max_subtasks: int = 6
    # [substring, seconds]: the first rule whose substring is in the request text wins
    latency_rules: list[tuple[str, float]] = field(default_factory=list)
    # Prompt caching as Anthropic does it: a prefix up to a cache_control breakpoint,
    # seen before within the TTL (refreshed on each read), is read from cache; a new
    # one is written; a prefix shorter than the minimum is not cached at all.
    cache_ttl_s: float = 300.0
    cache_min_tokens: int = 1024
    # structured-output form (`request_form`) -> the status the OpenAI wire answers it
    # with, its body naming the form's field (llama-cpp-python answers json_schema with
    # a 500 naming response_format).
    refuse_formats: dict[str, int] = field(default_factory=dict)
    # The only forms the endpoint takes (None: every form): any other is refused with a
    # 400 naming its field, as OpenAI refuses an argument it does not know.
    accept_formats: list[str] | None = None
    # substring -> event: a request whose text has the substring waits until the event
    # is set (tests release a call when they have seen it in flight: state, not time)
    holds: dict[str, threading.Event] = field(default_factory=dict)
    # kind -> seconds per output token ("*": any kind), as a model writes (50 tokens/s:
    # 0.02): a streamed answer arrives piece by piece at that rate, one not streamed
    # whole once written.
    token_s: dict[str, float] = field(default_factory=dict)

    def token_delay(self, kind: str) -> float:
        return self.token_s.get(kind, self.token_s.get("*", 0.0))

    def latency_for(self, model: str, kind: str, text: str) -> float:
        for needle, seconds in self.latency_rules:
            if needle in text:
                return seconds
        return self.latency(model, kind, text) if self.latency else self.latency_s

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Script:
        return cls(
            latency_s=float(data.get("latency_s", 0.0)),
            failures=[Failure(**f) for f in data.get("failures", [])],
            answers={k: [ToolUse.from_json(a) if isinstance(a, dict) else str(a) for a in v]
                     for k, v in data.get("answers", {}).items()},
            max_subtasks=int(data.get("max_subtasks", 6)),
            latency_rules=[(str(a), float(b)) for a, b in data.get("latency_rules", [])],
            cache_ttl_s=float(data.get("cache_ttl_s", 300.0)),
            cache_min_tokens=int(data.get("cache_min_tokens", 1024)),
            refuse_formats={str(k): int(v) for k, v in data.get("refuse_formats", {}).items()},
            accept_formats=[str(f) for f in data["accept_formats"]] if data.get("accept_formats") is not None
            else None,
            token_s={str(k): float(v) for k, v in data.get("token_s", {}).items()},
        )

    def refusal(self, form: str | None) -> Failure | None:
        """The scripted answer to a request asking for structured output in `form`."""
        if form is None:
            return None
        status = self.refuse_formats.get(form)
        if status is None and self.accept_formats is not None and form not in self.accept_formats:
            status = 400
        if status is None:
            return None
        extra = form in ("structured_outputs", "guided_json")
        return Failure(status, message=f"Unrecognized request argument supplied: {form}" if extra
                       else _FORMAT_REFUSAL)


def request_form(body: dict[str, Any]) -> str | None:
    """Which structured-output form an OpenAI-wire request asks for (the names of
    compound.llm.openai_client.FORMS), or None."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        kind = str(fmt.get("type", ""))
        return "json_object_schema" if kind == "json_object" and "schema" in fmt else kind
    for name in ("structured_outputs", "guided_json"):
        if name in body:
            return name
    return None


def prompt_kind(system: str) -> str:
    first = system.strip().splitlines()[0].strip() if system.strip() else ""
    return KINDS.get(first, "other")


def _tag(text: str, name: str) -> str:
    m = re.search(rf"<{name}>(.*?)</{name}>", text, re.S)
    return m.group(1).strip() if m else ""


def _indexed(text: str, name: str) -> list[tuple[int, str]]:
    return [
        (int(i), body.strip())
        for i, body in re.findall(rf'<{name} index="(\d+)"[^>]*>(.*?)</{name}>', text, re.S)
    ]


def _stems(text: str) -> set[str]:
    return {w[:5] for w in re.findall(r"[a-z]{4,}", text.lower())}


def tool_cards(system: str) -> list[tuple[str, set[str]]]:
    """The tool cards of a planner prompt (`- name(arguments): description` lines in its
    <tools> block): each name, and the word stems of its card."""
    block = _tag(system, "tools")
    cards = re.findall(r"^- ([^\s(]+)\(([^)]*)\)(?::\s*(.*))?$", block, re.M)
    return [(name, _stems(f"{name.replace('_', ' ').replace('.', ' ')} {args} {desc}"))
            for name, args, desc in cards]


def plan_for(request: str, max_subtasks: int = 6, tools: list[tuple[str, set[str]]] | None = None) -> dict[str, Any]:
    """A plausible plan from the request alone: its parts, then a joining step. With
    tool cards, a part that shares a word with a card names that tool (`tools`)."""
    parts = [p.strip(" .,\n") for p in re.split(r"\band\b|;|\.\s+|\n", request) if p.strip(" .,\n")]
    parts = parts[: max(1, max_subtasks - 1)] or ["answer the request"]
    subtasks: list[dict[str, Any]] = [
        {"description": f"Work out: {p[:200]}", "tier_hint": 1 + (i % 2), "depends_on": []}
        for i, p in enumerate(parts)
    ]
    for part, subtask in zip(parts, subtasks, strict=True):
        words = _stems(part)
        best = max(tools or [], key=lambda card: len(card[1] & words), default=None)
        if best is not None and best[1] & words:
            subtask["tools"] = [best[0]]
    if len(parts) > 1:
        subtasks.append(
            {
                "description": "Combine the findings into one recommendation",
                "tier_hint": 2,
                "depends_on": list(range(len(parts))),
            }
        )
    return {"reasoning": f"split into {len(parts)} independent parts and a joining step",
            "subtasks": subtasks}


def replan_for(text: str) -> dict[str, Any]:
    """A replanning round's additions: each failed subtask asked again in other words,
    using every finished result (the prompt's <finished> and <failed> blocks)."""
    finished = [int(i) for i in re.findall(r'<subtask index="(\d+)"', _tag(text, "finished"))]
    failed = re.findall(r'<subtask index="(\d+)" description="([^"]*)"', _tag(text, "failed"))
    return {"reasoning": f"{len(failed)} failed subtask(s) asked another way",
            "subtasks": [{"description": f"Another way to: {desc[:200]}", "tier_hint": 1, "depends_on": finished}
                         for _i, desc in failed]}


def answer_for(kind: str, text: str, max_subtasks: int, system: str = "") -> str:
    if kind == "planner" and "<failed>" in text:
        return json.dumps(replan_for(text))
    if kind == "planner":
        return json.dumps(plan_for(_tag(text, "request") or text, max_subtasks, tool_cards(system)))
    if kind == "worker":
        deps = _indexed(text, "dependency")
        seen = f" (using results of {', '.join(str(i) for i, _ in deps)})" if deps else ""
        return f"Result of subtask: {_tag(text, 'subtask')[:300]}{seen}"
    if kind == "checker":  # a cascade's check passes unless scripted: sim.answer("checker", "NO")
        return "YES"
    if kind == "synthesizer":
        results = _indexed(text, "result")
        joined = "\n".join(f"- [{i}] {r[:200]}" for i, r in results)
        return f"Final answer built from {len(results)} results:\n{joined}"
    return f"echo: {text[:200]}"


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


class Simulator:
    """The ASGI app plus its script and a log of what it received."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[dict[str, Any]] = []
        # (model, prefix digest) -> (readable from, expires at), monotonic seconds
        self.cache: dict[tuple[str, str], tuple[float, float]] = {}
        # calls being answered now, and the most at once, per model (tests of caps)
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self._anthropic, methods=["POST"]),
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/chat/completions", self._openai, methods=["POST"]),
                Route("/healthz", self._health, methods=["GET"]),
                Route("/_sim/requests", self._log, methods=["GET"]),
                Route("/_sim/stats", self._stats, methods=["GET"]),
            ]
        )

    # scripting ---------------------------------------------------------------------

    def fail(self, *failures: Failure) -> None:
        with self._lock:
            self.script.failures.extend(failures)

    def answer(self, kind: str, *texts: str | ToolUse) -> None:
        with self._lock:
            self.script.answers.setdefault(kind, []).extend(texts)

    def calls(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if kind is None or r["kind"] == kind]

    # shared path -------------------------------------------------------------------

    async def _log(self, _request: Request) -> JSONResponse:
        """What the simulator was asked (tests of a simulator in another process)."""
        with self._lock:
            rows = [{k: r[k] for k in ("wire", "model", "kind", "text", "at", "ended_at")} for r in self.requests]
        return JSONResponse(rows)

    async def _stats(self, _request: Request) -> JSONResponse:
        """Calls in flight now and the peak, per model (a cap on concurrency is checked here)."""
        with self._lock:
            return JSONResponse({"in_flight": dict(self.in_flight), "peak": dict(self.peak)})

    async def _health(self, _request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    def reset(self) -> None:
        """A fresh script, log and cache (tests share one simulator)."""
        with self._lock:
            self.script = Script()
            self.requests.clear()
            self.cache.clear()

    async def _common(
        self, wire: str, model: str, system: str, text: str, max_tokens: int, body: dict[str, Any],
        *, refusal: Failure | None = None, prefixes: list[str] | None = None, tools: Offered | None = None,
    ) -> tuple[Reply, int, int, tuple[int, int], Failure | None, float, dict[str, Any]] | JSONResponse:
        """Log, then a scripted failure or the answer: (reply, input tokens, output
        tokens, (cache read, cache write), a failure to cut its stream with, seconds per
        streamed token, the log record), after the scripted latency. The record's
        `ended_at` is set when the answer has been sent whole."""
        kind = prompt_kind(system)
        with self._lock:
            record: dict[str, Any] = {"wire": wire, "model": model, "kind": kind, "system": system, "text": text,
                                      "body": body, "at": time.time(), "ended_at": None}
            self.requests.append(record)
            failure = refusal
            for i, f in enumerate(self.script.failures):
                if failure is not None:
                    break
                if (f.model in (None, model)) and (f.kind in (None, kind)) and (f.text is None or f.text in text):
                    failure = f
                    f.times -= 1
                    if f.times <= 0:
                        self.script.failures.pop(i)
                    break
            queued = self.script.answers.get(kind) if failure is None else None
            forced = queued.pop(0) if queued else None
            self.in_flight[model] = self.in_flight.get(model, 0) + 1
            self.peak[model] = max(self.peak.get(model, 0), self.in_flight[model])
        delay = self.script.latency_for(model, kind, text)
        in_tok = _tokens(system + text)
        # Decided on arrival: a prefix still being written by a call in flight is a miss.
        cached = self._cached(model, prefixes, in_tok, delay) if prefixes and failure is None else (0, 0)
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            for needle, released in list(self.script.holds.items()):
                while needle in text and not released.is_set():
                    await asyncio.sleep(0.01)
            if failure is not None and failure.status == 0:
                await asyncio.sleep(failure.hang_s or 3600)
                failure = Failure(status=504)
        finally:
            with self._lock:
                self.in_flight[model] -= 1
        if failure is not None and not (failure.midstream and body.get("stream")):
            record["ended_at"] = time.time()
            return _error(wire, failure)
        offered = tools or Offered()
        if forced is None and offered.tools and not offered.results and not offered.none:
            name, schema = offered.tools[0]
            forced = ToolUse([(name, example_arguments(schema))])
        if isinstance(forced, ToolUse):
            reply = Reply(forced.text, [(f"{'toolu' if wire == 'anthropic' else 'call'}_{uuid.uuid4().hex[:20]}",
                                         offered.wire(name), args if isinstance(args, str) else json.dumps(args))
                                        for name, args in forced.calls])
            out_tok = min(max_tokens, _tokens(reply.text + "".join(c[1] + c[2] for c in reply.calls)))
            token_s = self.script.token_delay(kind)
            if not body.get("stream"):
                if token_s > 0:
                    await asyncio.sleep(out_tok * token_s)
                record["ended_at"] = time.time()
            return reply, in_tok, out_tok, cached, failure, token_s, record
        out = forced if forced is not None else answer_for(kind, text, self.script.max_subtasks, system)
        if forced is None and offered.results:
            out += " [tool results: " + " | ".join(r[:200] for r in offered.results) + "]"
        out_tok = _tokens(out)
        if out_tok > max_tokens:
            out = out.encode("utf-8")[: max_tokens * 4].decode("utf-8", "ignore")
            out_tok = max_tokens
        token_s = self.script.token_delay(kind)
        if not body.get("stream"):
            if token_s > 0:  # written at the same pace, sent whole at the end
                await asyncio.sleep(out_tok * token_s)
            record["ended_at"] = time.time()
        return Reply(out), in_tok, out_tok, cached, failure, token_s, record

    def _cached(self, model: str, prefixes: list[str], in_tok: int, delay: float) -> tuple[int, int]:
        """(cache_read, cache_write) tokens for the breakpoints' prefixes, Anthropic's way:
        the longest prefix in cache is read, the rest up to the last breakpoint written.
        A written entry is readable once this answer begins (after `delay`)."""
        sizes = [min(in_tok, _tokens(p)) for p in prefixes]
        now = time.monotonic()
        read = 0
        with self._lock:
            keys = [(model, hashlib.sha256(p.encode("utf-8")).hexdigest()) for p in prefixes]
            for key, size in reversed(list(zip(keys, sizes, strict=True))):
                ready, expiry = self.cache.get(key, (0.0, 0.0))
                if ready <= now < expiry:
                    read = size
                    break
            cacheable = [(k, n) for k, n in zip(keys, sizes, strict=True) if n >= self.script.cache_min_tokens]
            for key, _n in cacheable:
                ready, expiry = self.cache.get(key, (now + delay, 0.0))
                if expiry <= now:  # absent or expired: written by this call
                    ready = now + delay
                self.cache[key] = (ready, max(ready, now) + self.script.cache_ttl_s)
        longest = max((n for _k, n in cacheable), default=0)
        if longest < read:
            longest = read
        return read, longest - read

    # Anthropic Messages ------------------------------------------------------------

    async def _anthropic(self, request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        model = str(body.get("model", ""))
        system = body.get("system") or ""
        blocks: list[dict[str, Any]] = []  # every text block in order (the prompt's prefix order)
        if isinstance(system, list):
            blocks += [b for b in system if isinstance(b, dict)]
            system = "\n".join(b.get("text", "") for b in blocks)
        elif system:
            blocks.append({"type": "text", "text": system})
        for m in body.get("messages", []):
            content = m.get("content")
            blocks += ([b for b in content if isinstance(b, dict)] if isinstance(content, list)
                       else [{"type": "text", "text": _content_text(content)}])
        text = "\n".join(_content_text(m.get("content")) for m in body.get("messages", []))
        max_tokens = int(body.get("max_tokens") or 1024)
        prefixes = ["\n".join(str(b.get("text", "")) for b in blocks[: i + 1])
                    for i, b in enumerate(blocks) if b.get("cache_control")]
        offered = Offered(
            tools=[(str(t.get("name", "")), t.get("input_schema") or {}) for t in body.get("tools") or []],
            results=[_content_text(b.get("content")) for m in body.get("messages", [])
                     if isinstance(m.get("content"), list) for b in m["content"]
                     if isinstance(b, dict) and b.get("type") == "tool_result"],
            none=(body.get("tool_choice") or {}).get("type") == "none")
        got = await self._common("anthropic", model, system, text, max_tokens, body, prefixes=prefixes,
                                 tools=offered)
        if isinstance(got, JSONResponse):
            return got
        reply, in_tok, out_tok, (read, write), cut, token_s, record = got
        usage = {"input_tokens": in_tok - read - write, "output_tokens": out_tok,
                 "cache_read_input_tokens": read, "cache_creation_input_tokens": write}
        stop = "tool_use" if reply.calls else "max_tokens" if out_tok >= max_tokens else "end_turn"
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            return _sse(_anthropic_events(msg_id, model, reply, usage, stop), anthropic=True, cut=cut,
                        token_s=token_s, record=record)
        from anthropic.types import Message as AMessage

        answer: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text or not reply.calls else []
        answer += [{"type": "tool_use", "id": call_id, "name": name, "input": _input_object(args)}
                   for call_id, name, args in reply.calls]
        msg = AMessage(
            id=msg_id,
            type="message",
            role="assistant",
            model=model,
            content=answer,
            stop_reason=stop,
            stop_sequence=None,
            usage=usage,
        )
        return JSONResponse(msg.model_dump(mode="json", exclude_none=True))

    # OpenAI Chat Completions -------------------------------------------------------

    async def _openai(self, request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        model = str(body.get("model", ""))
        msgs = body.get("messages", [])
        system = "\n".join(_content_text(m.get("content")) for m in msgs if m.get("role") in ("system", "developer"))
        text = "\n".join(_content_text(m.get("content")) for m in msgs if m.get("role") not in ("system", "developer"))
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 1024)
        refusal = self.script.refusal(request_form(body))
        offered = Offered(
            tools=[(str((t.get("function") or {}).get("name", "")), (t.get("function") or {}).get("parameters") or {})
                   for t in body.get("tools") or []],
            results=[_content_text(m.get("content")) for m in msgs if m.get("role") == "tool"],
            none=body.get("tool_choice") == "none")
        got = await self._common("openai", model, system, text, max_tokens, body, refusal=refusal, tools=offered)
        if isinstance(got, JSONResponse):
            return got
        reply, in_tok, out_tok, _cached, cut, token_s, record = got
        usage = {"prompt_tokens": in_tok, "completion_tokens": out_tok, "total_tokens": in_tok + out_tok,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        stop = "tool_calls" if reply.calls else "length" if out_tok >= max_tokens else "stop"
        chat_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return _sse(_openai_chunks(chat_id, model, reply, usage if with_usage else None, stop), anthropic=False,
                        cut=cut, token_s=token_s, record=record)
        from openai.types.chat import ChatCompletion

        message: dict[str, Any] = {"role": "assistant", "content": reply.text if reply.text or not reply.calls
                                   else None}
        if reply.calls:
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                                     for call_id, name, args in reply.calls]
        completion = ChatCompletion(
            id=chat_id,
            object="chat.completion",
            created=int(time.time()),
            model=model,
            choices=[{"index": 0, "finish_reason": stop, "message": message}],
            usage=usage,
        )
        return JSONResponse(completion.model_dump(mode="json", exclude_none=True))


# What llama-cpp-python's server says when it cannot take a json_schema response_format.
_FORMAT_REFUSAL = ("1 validation error for CreateChatCompletionRequest\nresponse_format\n  "
                   "Input should be a valid dictionary or instance of ResponseFormat")
_PIECE = 24  # characters per streamed delta


def _pieces(text: str) -> list[str]:
    return [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)] or [""]


def _anthropic_events(msg_id: str, model: str, reply: Reply, usage: dict[str, int],
                      stop: str) -> list[tuple[str, dict[str, Any]]]:
    """The Messages API's streaming events: usage on message_start, a text block, each
    tool call a `tool_use` block whose input comes in `input_json_delta` pieces, output
    tokens (cumulative) on message_delta."""
    start_usage = {**usage, "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}}),
    ]
    index = 0
    if reply.text or not reply.calls:
        events += [("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
                   ("ping", {"type": "ping"})]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": piece}})
                   for piece in _pieces(reply.text)]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    for i, (call_id, name, args) in enumerate(reply.calls, start=index):
        events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
            "type": "tool_use", "id": call_id, "name": name, "input": {}}}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": i,
                                            "delta": {"type": "input_json_delta", "partial_json": piece}})
                   for piece in _pieces(args) if piece]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events += [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": usage["output_tokens"]}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def _openai_chunks(chat_id: str, model: str, reply: Reply, usage: dict[str, Any] | None,
                   stop: str) -> list[tuple[str, dict[str, Any]]]:
    """Chat Completions chunks: the text, then each tool call in `delta.tool_calls`
    (id and name first, then the arguments in pieces); with
    stream_options.include_usage a last chunk with no choices carries the usage (and
    every other chunk has usage null)."""
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> tuple[str, dict[str, Any]]:
        data = {"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}
        if usage is not None:
            data.setdefault("usage", None)
        return "", data

    chunks = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    if reply.text or not reply.calls:
        chunks += [chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in _pieces(reply.text)]
    for i, (call_id, name, args) in enumerate(reply.calls):
        head = {"index": i, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(chunk([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]))
        chunks += [chunk([{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": p}}]},
                           "finish_reason": None}]) for p in _pieces(args) if p]
    chunks.append(chunk([{"index": 0, "delta": {}, "finish_reason": stop}]))
    if usage is not None:
        chunks.append(chunk([], usage=usage))
    return chunks


class DroppedStream(Exception):
    """Raised in a streamed body to drop the connection midway (a scripted failure)."""


class _Droppable(StreamingResponse):
    """A stream that may end with its connection dropped, the body left unfinished."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except DroppedStream:
            return  # the server closes a response it never finished


def _sse(events: list[tuple[str, dict[str, Any]]], *, anthropic: bool, cut: Failure | None = None,
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
        pieces = 0
        for name, data in events:
            if cut is not None and pieces >= cut.after_pieces:
                if cut.midstream == "drop":
                    raise DroppedStream("the simulator drops this stream (scripted)")
                error = _error_body("anthropic" if anthropic else "openai", cut)
                yield (b"event: error\n" if anthropic else b"") + f"data: {json.dumps(error)}\n\n".encode()
                return
            delta = data.get("delta", {}) if anthropic else (data.get("choices") or [{}])[0].get("delta", {})
            piece = delta.get("text") or delta.get("content")
            if piece and token_s > 0:  # the piece is sent once the model has written it
                await asyncio.sleep(_tokens(piece) * token_s)
            head = f"event: {name}\n" if name else ""
            yield f"{head}data: {json.dumps(data)}\n\n".encode()
            pieces += bool(piece or delta.get("partial_json") or delta.get("tool_calls"))
        if not anthropic:
            yield b"data: [DONE]\n\n"

    return _Droppable(body(), media_type="text/event-stream")


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or its text and tool_result blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_content_text(b.get("content")) if b.get("type") == "tool_result" else b.get("text", "")
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


def example_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Arguments that satisfy a tool's input schema: its required properties, each its
    default, first enum value, or a plain value of its type."""
    properties = schema.get("properties") or {}
    required = [n for n in schema.get("required") or () if n in properties]
    return {n: _example(properties[n], n) for n in required}


def _example(schema: Any, name: str) -> Any:
    if not isinstance(schema, dict):
        return "example"
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _example(schema[key][0], name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer", "number"):
        low = schema.get("minimum", 1)
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return example_arguments(schema)
    return f"example {name}"


def _input_object(args: str) -> dict[str, Any]:
    """A tool_use block's input: the arguments' object (the Messages API always answers
    one; text that is none is wrapped as compound's adapters read it)."""
    from compound.llm.toolwire import parse_arguments

    return parse_arguments(args)


async def _json(request: Request) -> dict[str, Any] | JSONResponse:
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


def _error_body(wire: str, f: Failure) -> dict[str, Any]:
    """The provider's error body for the failure's status (also the data of an error
    event in a stream)."""
    message = f.message or f"simulated error {f.status}"
    if wire == "anthropic":
        kind = _ANTHROPIC_TYPES.get(f.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": "server_error" if f.status >= 500 else "invalid_request_error",
                      "param": None, "code": str(f.status)}}


def _error(wire: str, f: Failure) -> JSONResponse:
    headers = {"retry-after": str(f.retry_after)} if f.retry_after is not None else {}
    headers.update(f.headers)
    return JSONResponse(_error_body(wire, f), status_code=f.status, headers=headers)


# Idle connections stay open as long as a provider keeps them (uvicorn's 5 s default
# races a loaded client reusing a connection the server is closing: a spurious error).
KEEP_ALIVE_S = 75


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatorThread:
    """A simulator served by uvicorn in a background thread (tests, benchmarks)."""

    def __init__(self, script: Script | None = None, *, port: int | None = None) -> None:
        import uvicorn

        self.sim = Simulator(script)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.sim.app, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> SimulatorThread:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def run_simulator(host: str, port: int, script: Script | None = None) -> None:
    import uvicorn

    uvicorn.run(Simulator(script).app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)
