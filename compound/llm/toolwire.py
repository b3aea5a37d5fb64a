"""Tool calls on the providers' wires: compound's tool names (`server.tool`) encoded for
providers that forbid the dot and decoded back, the arguments a model wrote read into
an object, and the pieces of a streamed call put together. The one place of these rules
for every adapter (and the simulator)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compound.llm.base import ToolCall, ToolSpec

# OpenAI and Anthropic both take tool names of 1 to 64 of these characters.
WIRE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
WIRE_MAX = 64
# The arguments a model wrote that are not a JSON object (malformed JSON, or a list, a
# string, a number) are kept as their raw text under this one key: the call is still
# returned, and whoever runs it can tell the model its arguments were unreadable.
RAW_ARGUMENTS = "_raw_arguments"
# An error result of a tool on a wire without an error flag (OpenAI's role "tool"
# messages) starts with this, so the model reads that the call failed.
ERROR_PREFIX = "Error: "


def wire_name(name: str) -> str:
    """`server.tool` as a provider takes it: `server__tool` when that reads back
    unambiguously (the tool's name is wire-safe, the server's has no `__` and does not
    end in `_`, 64 characters at most); otherwise a wire-safe form of the name, cut to
    fit, ending in `_` and 8 hex digits of its SHA-256. The same name always gives the
    same wire name (prompt caches and recorded calls stay valid)."""
    server, dot, tool = name.partition(".")
    plain = f"{server}__{tool}" if dot else name
    if (WIRE_NAME.fullmatch(plain) and "__" not in server and not server.endswith("_")
            and (not dot or WIRE_NAME.fullmatch(tool))):
        return plain
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", plain)[: WIRE_MAX - 9]
    return f"{safe}_{digest}"


@dataclass(frozen=True)
class ToolNames:
    """The wire names of one call's tools, both ways."""

    to_wire: dict[str, str] = field(default_factory=dict)
    from_wire: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, names: Iterable[str]) -> ToolNames:
        to_wire: dict[str, str] = {}
        from_wire: dict[str, str] = {}
        for name in names:
            wire = wire_name(name)
            other = from_wire.get(wire)
            if other is not None and other != name:
                raise ValueError(f"tools {other!r} and {name!r} have the same wire name {wire!r}; rename one")
            to_wire[name] = wire
            from_wire[wire] = name
        return cls(to_wire, from_wire)

    def wire(self, name: str) -> str:
        """A name for the wire (also a name not among the tools: one in the history)."""
        return self.to_wire.get(name) or wire_name(name)

    def name(self, wire: str) -> str:
        """compound's name of a tool the model called; a name that is none of the given
        tools' is returned as it came (the caller decides what an unknown tool means)."""
        return self.from_wire.get(wire, wire)


def names_of(tools: Sequence[ToolSpec] | None, messages: Iterable[Any] = ()) -> ToolNames:
    """The wire names of a call's tools, and of the other names its history's calls
    carry (a name a model invented goes back under its own wire name, unless that is
    taken by a given tool)."""
    names = ToolNames.of(t.name for t in tools or ())
    for m in messages:
        for c in m.get("tool_calls") or ():
            wire = wire_name(c.name)
            if c.name not in names.to_wire and wire not in names.from_wire:
                names.to_wire[c.name] = wire
                names.from_wire[wire] = c.name
    return names


def parse_arguments(text: str | None) -> dict[str, Any]:
    """The arguments a model wrote, as an object: empty text is `{}`; text that is not
    a JSON object is `{RAW_ARGUMENTS: text}` (never an exception)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {RAW_ARGUMENTS: text}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS: text}


def raw_arguments(call: ToolCall) -> str | None:
    """The unreadable text a model wrote as a call's arguments, or None when they were a
    JSON object."""
    raw = call.arguments.get(RAW_ARGUMENTS)
    return raw if len(call.arguments) == 1 and isinstance(raw, str) else None


def arguments_text(call: ToolCall) -> str:
    """A call's arguments as the model wrote them, for the history sent back (OpenAI's
    `function.arguments` string): the raw text of unreadable ones, else compact JSON."""
    raw = raw_arguments(call)
    return raw if raw is not None else json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))


def result_text(message: Any) -> str:
    """A tool message's content for a wire without an error flag."""
    text = str(message["content"])
    return ERROR_PREFIX + text if message.get("is_error") else text


# The OpenAI wire (the openai SDK, litellm) ----------------------------------------


def openai_tools(tools: Sequence[ToolSpec], names: ToolNames) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": names.wire(t.name), "description": t.description,
                                              "parameters": t.input_schema or {"type": "object", "properties": {}}}}
            for t in tools]


def openai_messages(messages: Sequence[Any], names: ToolNames) -> list[dict[str, Any]]:
    """Chat Completions messages: an assistant turn's tool calls as `tool_calls`, a tool
    result as a role "tool" message (an error result says so in its text)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role == "tool":
            out.append({"role": "tool", "tool_call_id": m.get("tool_call_id", ""), "content": result_text(m)})
        elif role == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": m["content"] or None, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": names.wire(c.name),
                                                              "arguments": arguments_text(c)}}
                for c in m["tool_calls"]]})
        else:
            out.append({"role": role, "content": m["content"]})
    return out


def openai_calls(calls: Any, names: ToolNames) -> tuple[ToolCall, ...]:
    """The tool calls of a Chat Completions message (the SDK's objects or litellm's)."""
    got = []
    for c in calls or ():
        function = getattr(c, "function", None)
        got.append(ToolCall(id=str(getattr(c, "id", None) or ""),
                            name=names.name(str(getattr(function, "name", None) or "")),
                            arguments=parse_arguments(getattr(function, "arguments", None))))
    return tuple(got)


class StreamedCalls:
    """Tool calls put together from a stream's pieces, in the order they started: an
    OpenAI `delta.tool_calls[i]` (id and name first, then pieces of `arguments`) or an
    Anthropic `tool_use` block (its `input_json_delta` pieces)."""

    def __init__(self, names: ToolNames) -> None:
        self.names = names
        self._calls: dict[int, list[Any]] = {}  # index -> [id, wire name, argument pieces, whole input]

    def start(self, index: int, *, id: str | None = None, name: str | None = None,
              whole: dict[str, Any] | None = None) -> None:
        call = self._calls.setdefault(index, ["", "", [], None])
        if id:
            call[0] = id
        if name and name != call[1]:  # a name in pieces is joined; one repeated per chunk is not
            call[1] += name
        if whole:
            call[3] = whole

    def piece(self, index: int, text: str | None) -> None:
        if text:
            self._calls.setdefault(index, ["", "", [], None])[2].append(text)

    def openai_delta(self, deltas: Any) -> None:
        """Add a chunk's `delta.tool_calls`."""
        for d in deltas or ():
            index = int(getattr(d, "index", 0) or 0)
            function = getattr(d, "function", None)
            self.start(index, id=getattr(d, "id", None), name=getattr(function, "name", None))
            self.piece(index, getattr(function, "arguments", None))

    def calls(self) -> tuple[ToolCall, ...]:
        out = []
        for _index, (call_id, wire, pieces, whole) in sorted(self._calls.items()):
            text = "".join(pieces)
            arguments = parse_arguments(text) if text or whole is None else dict(whole)
            out.append(ToolCall(id=call_id, name=self.names.name(wire), arguments=arguments))
        return tuple(out)
