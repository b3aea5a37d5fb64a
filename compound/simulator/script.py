"""The simulator's script: what it answers, how slowly, and which calls fail."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


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
                       else FORMAT_REFUSAL)


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


# What llama-cpp-python's server says when it cannot take a json_schema response_format.
FORMAT_REFUSAL = ("1 validation error for CreateChatCompletionRequest\nresponse_format\n  "
                   "Input should be a valid dictionary or instance of ResponseFormat")
