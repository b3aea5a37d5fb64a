"""Pure plan validation: takes whatever JSON arrived and either returns a PlanIn or
raises PlanInvalid listing every problem at once, in words a person can act on."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from compound.core.errors import PlanInvalid
from compound.planner.plan import Dependency, PlanIn, SubtaskIn

MAX_DESCRIPTION_CHARS = 4000


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_plan(data: Any, *, max_subtasks: int, raw: str | None = None,
                  tools: Collection[str] | None = None, kinds: Collection[str] = ()) -> PlanIn:
    """`tools`: the catalogue's tool names (`server.tool`); a plan naming any other is
    invalid. None: no catalogue at hand, names are checked for their form only (the
    run finds out). `kinds`: the registered step kinds, beside "llm" and "tool"; given
    as a mapping of each kind to its arguments' JSON schema, a step's arguments are
    checked against it (argument_errors)."""
    errors: list[str] = []
    if isinstance(data, PlanIn):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise PlanInvalid(
            [f"a plan must be a JSON object with a 'subtasks' list, got {_kind(data)}"], raw
        )
    reasoning = _reasoning(data.get("reasoning"), errors)
    subtasks = _subtask_list(data, errors, max_subtasks=max_subtasks, raw=raw)
    n = len(subtasks)
    clean: list[SubtaskIn] = []
    deps_ok: list[list[int]] = []
    for i, item in enumerate(subtasks):
        if not isinstance(item, dict):
            errors.append(f"subtask {i} must be an object, got {_kind(item)}")
            deps_ok.append([])
            continue
        description = _description(i, item.get("description"), errors)
        tier = _tier(i, item.get("tier_hint", 1), errors)
        good, optional = _dependencies(i, item.get("depends_on", []), n, errors)
        deps_ok.append(good)
        entries: list[int | Dependency] = [Dependency(index=d, required=False) if d in optional else d
                                           for d in good]
        clean.append(SubtaskIn(description=description.strip(), tier_hint=tier, depends_on=entries,
                               **_step_fields(i, item, errors, tools=tools, kinds=kinds)))

    cycle = find_cycle(deps_ok)
    if cycle:
        errors.append(
            "the plan has a cycle: " + " -> ".join(str(i) for i in [*cycle, cycle[0]])
            + " (each depends on the next)"
        )
    if errors:
        raise PlanInvalid(errors, raw)
    return PlanIn(reasoning=reasoning, subtasks=clean)


def _reasoning(reasoning: Any, errors: list[str]) -> str | None:
    """The plan's reasoning, or None when it is absent or unusable (noted in errors)."""
    if reasoning is not None and not isinstance(reasoning, str):
        errors.append(f"'reasoning' must be a string, got {_kind(reasoning)}")
        return None
    if reasoning is not None and not is_clean_text(reasoning):
        errors.append("'reasoning' contains a NUL character or a lone surrogate; send plain UTF-8 text")
        return None
    return reasoning


def _subtask_list(data: dict[str, Any], errors: list[str], *, max_subtasks: int,
                  raw: str | None) -> list[Any]:
    """The plan's 'subtasks' list; raises when there is none, notes a bad count."""
    subtasks = data.get("subtasks")
    if subtasks is None:
        raise PlanInvalid(["the plan has no 'subtasks' list"], raw)
    if not isinstance(subtasks, list):
        raise PlanInvalid([f"'subtasks' must be a list, got {_kind(subtasks)}"], raw)
    n = len(subtasks)
    if n == 0:
        errors.append("the plan has no subtasks; it needs at least 1")
    if n > max_subtasks:
        errors.append(f"the plan has {n} subtasks; at most {max_subtasks} are allowed")
    return subtasks


def _description(i: int, description: Any, errors: list[str]) -> str:
    """Subtask i's description as given ("" when it is not a string), its problems noted."""
    if not isinstance(description, str):
        errors.append(f"subtask {i} needs a 'description' string, got {_kind(description)}")
        return ""
    if not description.strip():
        errors.append(f"subtask {i} has a blank description")
    elif not is_clean_text(description):
        errors.append(f"subtask {i}'s description contains a NUL character or a lone surrogate; "
                      "send plain UTF-8 text")
    elif len(description) > MAX_DESCRIPTION_CHARS:
        errors.append(
            f"subtask {i} has a description of {len(description)} characters; "
            f"at most {MAX_DESCRIPTION_CHARS} are allowed"
        )
    return description


def _tier(i: int, tier: Any, errors: list[str]) -> int:
    """Subtask i's tier_hint, 1 when it is not 1, 2 or 3 (noted in errors)."""
    if not _is_int(tier) or not 1 <= tier <= 3:
        errors.append(f"subtask {i} has tier_hint {_show(tier)}; it must be 1, 2 or 3")
        return 1
    assert isinstance(tier, int)
    return tier


def _dependencies(i: int, depends: Any, n: int, errors: list[str]) -> tuple[list[int], set[int]]:
    """Subtask i's usable dependencies in order, without repeats, and which of them are
    optional (`{"index": d, "required": false}` and never listed as required)."""
    if depends is None:
        depends = []
    if not isinstance(depends, list):
        errors.append(f"subtask {i} has depends_on {_show(depends)}; it must be a list of indices")
        depends = []
    good: list[int] = []
    optional: set[int] = set()
    for entry in depends:
        parsed = _dependency_entry(i, entry, errors)
        if parsed is None:
            continue
        d, required = parsed
        if not _is_int(d):
            errors.append(f"subtask {i} depends on {_show(d)}, which is not a subtask index")
        elif d == i:
            errors.append(f"subtask {i} depends on itself")
        elif not 0 <= d < n:
            errors.append(
                f"subtask {i} depends on {d}, but the plan has {n} subtasks (indices 0 to {n - 1})"
            )
        elif d not in good:
            good.append(d)
            if not required:
                optional.add(d)
        elif required:
            optional.discard(d)  # listed twice: required once is required
    return good, optional


def _dependency_entry(i: int, entry: Any, errors: list[str]) -> tuple[Any, bool] | None:
    """A depends_on entry as (index, required): a bare index is required; an object
    with unknown keys or a non-boolean 'required' is noted in errors and gives None."""
    if not isinstance(entry, dict):
        return entry, True
    d, required = entry.get("index"), entry.get("required", True)
    unknown = sorted(str(k) for k in entry if k not in ("index", "required"))
    if unknown:
        errors.append(f"subtask {i} has a dependency {_show(entry)} with unknown key(s) "
                      f"{', '.join(unknown)}; write {{\"index\": i, \"required\": false}}")
        return None
    if not isinstance(required, bool):
        errors.append(f"subtask {i} has a dependency {_show(entry)} whose 'required' is "
                      f"{_show(required)}; it must be true or false")
        return None
    return d, required


STEP_KINDS = ("llm", "tool")


def _tool_name(value: Any) -> bool:
    """`server.tool`: a dot with something on both sides of the first one."""
    return isinstance(value, str) and all(value.partition(".")[::2]) and "." in value


def _unknown_tool(i: int, name: str, tools: Collection[str] | None) -> str | None:
    """The error for a tool name that is not `server.tool`, or not in the catalogue."""
    if not _tool_name(name):
        return (f"subtask {i} names tool {_show(name)}; a tool is named server.tool "
                "(the MCP server's name, a dot, the tool's name)")
    if tools is None or name in tools:
        return None
    if not tools:
        return (f"subtask {i} names tool {name!r}, but no MCP server is configured "
                "(mcp_servers in the config file, or COMPOUND_MCP_SERVERS)")
    close = difflib.get_close_matches(name, list(tools), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"subtask {i} names tool {name!r}, which no configured MCP server offers{hint}; "
            "GET /v1/tools or `compound tools list` shows the tools there are")


def _step_fields(i: int, item: dict[str, Any], errors: list[str], *, tools: Collection[str] | None,
                 kinds: Collection[str]) -> dict[str, Any]:
    """A subtask's section 11 fields (kind, tools, tool, arguments), checked for shape
    and, given a catalogue, for tools that exist."""
    kind = _step_kind(i, item.get("kind", "llm"), errors, kinds=kinds)
    out: dict[str, Any] = {"kind": kind, "tools": _listed_tools(i, item.get("tools"), errors, tools=tools)}
    tool, arguments = item.get("tool"), item.get("arguments")
    if kind == "tool":
        out["tool"], out["arguments"] = _tool_call(i, tool, arguments, errors, tools=tools)
    else:
        out["tool"], out["arguments"] = _other_step(i, kind, tool, arguments, errors, kinds=kinds)
    return out


def _step_kind(i: int, kind: Any, errors: list[str], *, kinds: Collection[str]) -> str:
    """Subtask i's kind: "llm" when absent, or when not one there is (noted in errors)."""
    allowed = (*STEP_KINDS, *kinds)
    if kind is None:
        kind = "llm"
    if kind not in allowed:
        named = ", ".join(f'"{k}"' for k in allowed[:-1]) + f' or "{allowed[-1]}"'
        errors.append(f"subtask {i} has kind {_show(kind)}; it must be {named}"
                      + ("" if kinds else " (no step kinds are registered)"))
        return "llm"
    assert isinstance(kind, str)
    return kind


def _listed_tools(i: int, named_tools: Any, errors: list[str], *,
                  tools: Collection[str] | None) -> list[str]:
    """The tools subtask i's model may use: the well-formed, known names, once each."""
    if named_tools is None:
        named_tools = []
    if not isinstance(named_tools, list):
        errors.append(f"subtask {i} has tools {_show(named_tools)}; it must be a list of tool names "
                      '(["server.tool", ...])')
        named_tools = []
    good: list[str] = []
    for name in named_tools:
        if not isinstance(name, str):
            errors.append(f"subtask {i} lists {_show(name)} in tools; each must be a tool name server.tool")
            continue
        error = _unknown_tool(i, name, tools)
        if error is not None:
            errors.append(error)
        elif name not in good:
            good.append(name)
    return good


def _tool_call(i: int, tool: Any, arguments: Any, errors: list[str], *,
               tools: Collection[str] | None) -> tuple[str | None, dict[str, Any]]:
    """A "tool" subtask's tool (None when missing or unknown) and arguments ({} for none)."""
    if not isinstance(tool, str) or not tool:
        errors.append(f'subtask {i} is of kind "tool" but names no tool: set "tool" to the tool to call '
                      f"(server.tool), not {_show(tool)}")
        tool = None
    else:
        error = _unknown_tool(i, tool, tools)
        if error is not None:
            errors.append(error)
            tool = None
    if arguments is None:
        arguments = {}  # a call with no arguments
    elif not isinstance(arguments, dict):
        errors.append(f'subtask {i} is of kind "tool" and needs "arguments", a JSON object of the call\'s '
                      f"arguments ({{}} for none), not {_show(arguments)}")
        arguments = {}
    return tool, arguments


def _other_step(i: int, kind: str, tool: Any, arguments: Any, errors: list[str], *,
                kinds: Collection[str]) -> tuple[None, Any]:
    """An "llm" or step-kind subtask names no tool; only a step kind takes arguments,
    checked against the kind's schema when one is registered."""
    if tool is not None:
        errors.append(f'subtask {i} names tool {_show(tool)} but is of kind "{kind}"; set "kind": "tool" '
                      'to call it directly, or list it in "tools" for the subtask\'s model to use')
    if arguments is not None and (kind == "llm" or not isinstance(arguments, dict)):
        errors.append(f"subtask {i} has arguments {_show(arguments)}; "
                      + ('only a subtask of kind "tool" or of a step kind takes arguments' if kind == "llm"
                         else "they must be a JSON object"))
        arguments = None
    schema = kinds.get(kind) if isinstance(kinds, Mapping) else None
    if kind not in STEP_KINDS and isinstance(schema, dict):  # a step kind's arguments against its schema
        errors.extend(f"subtask {i} (kind {_show(kind)}): {e}" for e in argument_errors(schema, arguments or {}))
    return None, arguments


def is_clean_text(text: str) -> bool:
    """Text every store can hold: no NUL (PostgreSQL refuses it) and valid UTF-8 (no
    lone surrogates, which JSON's \\ud800 escapes can smuggle in)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find_cycle(deps: list[list[int]]) -> list[int] | None:
    """A cycle of dependencies as a list of indices, or None. Iterative DFS."""
    white, grey, black = 0, 1, 2
    color = [white] * len(deps)
    for start in range(len(deps)):
        if color[start] != white:
            continue
        stack: list[tuple[int, int]] = [(start, 0)]
        path: list[int] = [start]
        color[start] = grey
        while stack:
            node, pos = stack[-1]
            if pos < len(deps[node]):
                stack[-1] = (node, pos + 1)
                nxt = deps[node][pos]
                if color[nxt] == grey:
                    return path[path.index(nxt) :]
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),)}


def argument_errors(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> list[str]:
    """A step's arguments against its object schema, to the depth a plan needs: the
    required properties, no others when `additionalProperties` is false, and each
    property's `type` and `enum`."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    assert isinstance(props, dict)
    errors = [f"argument {name!r} is required" for name in schema.get("required") or [] if name not in arguments]
    if schema.get("additionalProperties") is False:
        errors += [f"argument {name!r} is not one it takes (it takes {', '.join(props) or 'none'})"
                   for name in arguments if name not in props]
    for name, value in arguments.items():
        spec = props.get(name)
        if not isinstance(spec, dict):
            continue
        wanted = spec.get("type")
        types = [wanted] if isinstance(wanted, str) else wanted if isinstance(wanted, list) else []
        if types and not any(_is_type(value, t) for t in types):
            errors.append(f"argument {name!r} must be of type {' or '.join(map(str, types))}, not {_kind(value)}")
        if isinstance(spec.get("enum"), list) and value not in spec["enum"]:
            errors.append(f"argument {name!r} must be one of {spec['enum']}, not {_show(value)}")
    return errors


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(name, (object,)))
