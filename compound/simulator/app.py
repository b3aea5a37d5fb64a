"""The simulator's ASGI app: its routes, the script it follows, a log of what it was
asked, the calls in flight, and Anthropic's prompt cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from compound.simulator.answers import answer_for, example_arguments, prompt_kind, tokens
from compound.simulator.anthropic_wire import messages
from compound.simulator.openai_wire import chat_completions
from compound.simulator.script import Failure, Reply, Script, ToolUse
from compound.simulator.wire import Offered, error_response


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

    async def respond(
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
            failure = refusal if refusal is not None else self._take_failure(model, kind, text)
            queued = self.script.answers.get(kind) if failure is None else None
            forced = queued.pop(0) if queued else None
            self.in_flight[model] = self.in_flight.get(model, 0) + 1
            self.peak[model] = max(self.peak.get(model, 0), self.in_flight[model])
        delay = self.script.latency_for(model, kind, text)
        in_tok = tokens(system + text)
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
            return error_response(wire, failure)
        offered = tools or Offered()
        if forced is None and offered.tools and not offered.results and not offered.none:
            name, schema = offered.tools[0]
            forced = ToolUse([(name, example_arguments(schema))])
        if isinstance(forced, ToolUse):
            reply, out_tok = _tool_reply(wire, forced, offered, max_tokens)
        else:
            reply, out_tok = self._text_reply(kind, system, text, forced, offered, max_tokens)
        token_s = self.script.token_delay(kind)
        if not body.get("stream"):
            if token_s > 0:  # written at the same pace, sent whole at the end
                await asyncio.sleep(out_tok * token_s)
            record["ended_at"] = time.time()
        return reply, in_tok, out_tok, cached, failure, token_s, record

    def _take_failure(self, model: str, kind: str, text: str) -> Failure | None:
        """The first scripted failure that matches the call, counted down (dropped from
        the script when used up); None when none matches. The caller holds the lock."""
        for i, f in enumerate(self.script.failures):
            if (f.model in (None, model)) and (f.kind in (None, kind)) and (f.text is None or f.text in text):
                f.times -= 1
                if f.times <= 0:
                    self.script.failures.pop(i)
                return f
        return None

    def _text_reply(self, kind: str, system: str, text: str, forced: str | None, offered: Offered,
                    max_tokens: int) -> tuple[Reply, int]:
        """A text answer and its output tokens: the queued text, else the prompt kind's
        answer (quoting the conversation's tool results), cut to `max_tokens`."""
        out = forced if forced is not None else answer_for(kind, text, self.script.max_subtasks, system)
        if forced is None and offered.results:
            out += " [tool results: " + " | ".join(r[:200] for r in offered.results) + "]"
        out_tok = tokens(out)
        if out_tok > max_tokens:
            out = out.encode("utf-8")[: max_tokens * 4].decode("utf-8", "ignore")
            out_tok = max_tokens
        return Reply(out), out_tok

    def _cached(self, model: str, prefixes: list[str], in_tok: int, delay: float) -> tuple[int, int]:
        """(cache_read, cache_write) tokens for the breakpoints' prefixes, Anthropic's way:
        the longest prefix in cache is read, the rest up to the last breakpoint written.
        A written entry is readable once this answer begins (after `delay`)."""
        sizes = [min(in_tok, tokens(p)) for p in prefixes]
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

    # the wire formats --------------------------------------------------------------

    async def _anthropic(self, request: Request) -> Response:
        return await messages(self, request)

    async def _openai(self, request: Request) -> Response:
        return await chat_completions(self, request)


def _tool_reply(wire: str, use: ToolUse, offered: Offered, max_tokens: int) -> tuple[Reply, int]:
    """An answer that asks for `use`'s calls, each under a fresh id in the wire's style
    and the wire name the request gave its tool, and its output tokens (at most
    `max_tokens`)."""
    reply = Reply(use.text, [(f"{'toolu' if wire == 'anthropic' else 'call'}_{uuid.uuid4().hex[:20]}",
                              offered.wire(name), args if isinstance(args, str) else json.dumps(args))
                             for name, args in use.calls])
    return reply, min(max_tokens, tokens(reply.text + "".join(c[1] + c[2] for c in reply.calls)))
