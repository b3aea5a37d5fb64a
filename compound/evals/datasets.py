"""Eval items from a file: compound's own dataset (expected properties, no gold graph)
and readers for WorFBench, T-Eval's plan set and TaskBench (gold graphs)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compound.core.errors import UserInputError
from compound.evals.graph import Graph
from compound.tools.catalogue import Tool, one_line

FORMATS = ("own", "worfbench", "teval", "taskbench")


@dataclass(frozen=True)
class Expect:
    """What a good plan for an own-dataset request looks like. Keywords match a subtask
    description case-insensitively; "a|b" means either word."""

    subtasks: tuple[int, int] = (1, 20)  # inclusive range
    min_width: int = 1  # the widest wave has at least this many subtasks
    orderings: list[tuple[str, str]] = field(default_factory=list)  # first is an ancestor of second
    tiers: dict[str, int] = field(default_factory=dict)  # keyword -> tier assigned


@dataclass(frozen=True)
class Item:
    id: str
    request: str
    shape: str = ""
    gold: Graph | None = None
    expect: Expect | None = None
    # T-Eval and TaskBench: the tools offered to the planner (its catalogue) and the
    # names (`server.tool`) of those the gold plan uses
    tools: tuple[Tool, ...] = ()
    gold_tools: frozenset[str] = frozenset()


def load(path: Path, fmt: str) -> list[Item]:
    """The items of a dataset file, or UserInputError naming the file and what is wrong."""
    readers: dict[str, Callable[[Any], list[Item]]] = {
        "own": _own, "worfbench": _worfbench, "teval": _teval, "taskbench": _taskbench}
    if fmt not in readers:
        raise UserInputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"cannot read the dataset {path}: {exc.strerror or exc}") from None
    try:
        data = _json_or_lines(text)
    except ValueError as exc:
        raise UserInputError(f"{path} is neither JSON nor JSON lines: {exc}") from None
    try:
        items = readers[fmt](data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserInputError(f"{path} is not in the {fmt} format: {type(exc).__name__}: {exc}") from None
    if not items:
        raise UserInputError(f"{path} has no items")
    return items


def _json_or_lines(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _rows(data: Any) -> list[Any]:
    return data if isinstance(data, list) else [data]


# compound's own -----------------------------------------------------------------------

def _own(data: Any) -> list[Item]:
    items = []
    for k, row in enumerate(_rows(data)):
        e = row.get("expect") or {}
        lo, hi = e.get("subtasks", [1, 20])
        expect = Expect(subtasks=(int(lo), int(hi)), min_width=int(e.get("min_width", 1)),
                        orderings=[(str(a), str(b)) for a, b in e.get("orderings", [])],
                        tiers={str(kw): int(t) for kw, t in e.get("tiers", {}).items()})
        items.append(Item(id=str(row.get("id", k)), request=str(row["request"]), shape=str(row.get("shape", "")),
                          expect=expect))
    return items


# WorFBench: graph_eval.json -----------------------------------------------------------

_NODE = re.compile(r"\d+[:.] (.+)")  # WorFBench's node_eval.py patterns
_EDGE = re.compile(r"\(\s*(\d+|START)\s*,\s*(\d+|END)\s*\)")


def parse_worfbench_answer(text: str) -> Graph:
    """`Node:\\n1: ...\\n2: ...\\nEdge: (START,1) (1,2) ... (n,END)` as a Graph. Edges to
    START and END are dropped (the scorer adds them back from roots and leaves)."""
    cut = text.rfind("Edge")
    node_part, edge_part = (text, "") if cut < 0 else (text[:cut], text[cut:])
    nodes = [m.strip() for m in _NODE.findall(node_part)]
    edges = []
    for a, b in _EDGE.findall(edge_part):
        if a == "START" or b == "END":
            continue
        u, v = int(a) - 1, int(b) - 1
        if 0 <= u < len(nodes) and 0 <= v < len(nodes) and u != v:
            edges.append((u, v))
    return Graph(nodes, sorted(set(edges)))


def _message(m: dict[str, Any]) -> tuple[str, str]:
    role = str(m.get("role", m.get("from", "")))
    return role, str(m.get("content", m.get("value", "")))


def _worfbench(data: Any) -> list[Item]:
    items = []
    for k, row in enumerate(_rows(data)):
        turns = [_message(m) for m in row["conversations"]]
        gold = parse_worfbench_answer(turns[-1][1])
        users = [text for role, text in turns[:-1] if role in ("user", "human")]
        request = users[-1] if users else turns[-2][1]
        items.append(Item(id=str(row.get("id", k)), request=request, shape=str(row.get("source", "worfbench")),
                          gold=gold))
    return items


# tools ------------------------------------------------------------------------------

def tool_name(fmt: str, name: str) -> str:
    """A benchmark's tool name as a catalogue name `server.tool`: kept when it already
    has that shape (T-Eval's `FilmDouban.fetch_film_details`), else under a server
    named after the format (TaskBench's `Image-to-Text` is `taskbench.Image-to-Text`)."""
    server, dot, tool = name.partition(".")
    return name if dot and server and tool else f"{fmt}.{name}"


def _catalogue(fmt: str, names: list[str], descriptions: dict[str, str],
               arguments: dict[str, tuple[str, ...]] | None = None) -> tuple[Tool, ...]:
    out: dict[str, Tool] = {}
    for name in names:
        server, _, tool = tool_name(fmt, name).partition(".")
        out.setdefault(f"{server}.{tool}", Tool(
            server=server, tool=tool, description=one_line(descriptions.get(name, "")),
            arguments=(arguments or {}).get(name, ()), input_schema={}, read_only=True, idempotent=True,
            available=True))
    return tuple(out.values())


# T-Eval: the plan set ----------------------------------------------------------------

def _step_text(name: str, args: Any) -> str:
    if isinstance(args, dict):
        values = " ".join(str(v) for v in args.values())
    elif isinstance(args, list):
        values = " ".join(str(v) for v in args)
    else:
        values = str(args or "")
    return f"{name} {values}".strip()


# Steps of T-Eval's gold plans that end the episode rather than call a tool.
TEVAL_ACTIONS = frozenset({"FinishAction"})


def _listed_apis(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The API list in a T-Eval system message (a JSON list of {"name", "description",
    "required_parameters", "optional_parameters"}): name -> (description, argument
    names); {} when the message holds no such list."""
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "["):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        apis = [a for a in value if isinstance(a, dict) and "name" in a] if isinstance(value, list) else []
        if apis:
            return {str(a["name"]): (str(a.get("description") or ""), tuple(
                str(p["name"]) for key in ("required_parameters", "optional_parameters")
                for p in a.get(key) or [] if isinstance(p, dict) and "name" in p)) for a in apis}
    return {}


def _teval(data: Any) -> list[Item]:
    items = []
    for key, row in data.items():
        steps = row["ground_truth"]
        if isinstance(steps, str):  # T-Eval stores it as JSON text in some releases
            steps = json.loads(steps)
        index = {step["id"]: i for i, step in enumerate(steps)}
        nodes = [_step_text(str(s["name"]), s.get("args")) for s in steps]
        edges = [(index[p], i) for i, s in enumerate(steps) for p in s.get("prev", []) if p in index and index[p] != i]
        prompt = row["origin_prompt"]
        turns = [_message(m) for m in prompt] if isinstance(prompt, list) else [("user", str(prompt))]
        users = [text for role, text in turns if role in ("user", "human")]
        systems = " ".join(text for role, text in turns if role == "system")
        used = [str(s["name"]) for s in steps if str(s["name"]) not in TEVAL_ACTIONS]
        listed = _listed_apis(systems)
        catalogue = _catalogue("teval", [*used, *listed], {k: d for k, (d, _) in listed.items()},
                               {k: a for k, (_, a) in listed.items()})
        items.append(Item(id=str(key), request=users[-1] if users else turns[-1][1], shape="teval",
                          gold=Graph(nodes, sorted(set(edges))), tools=catalogue,
                          gold_tools=frozenset(tool_name("teval", u) for u in used)))
    return items


# TaskBench ---------------------------------------------------------------------------

def _taskbench(data: Any) -> list[Item]:
    """Each item's catalogue is every tool the file's gold plans use (one TaskBench
    file is one domain), so the planner chooses among the domain's tools."""
    rows = _rows(data)
    names = [str(t["task"]) for row in rows for t in row["task_nodes"]]
    catalogue = _catalogue("taskbench", names, {})
    items = []
    for k, row in enumerate(rows):
        tasks = row["task_nodes"]
        nodes = [_step_text(str(t["task"]), t.get("arguments")) for t in tasks]
        by_name: dict[str, int] = {}
        for i, t in enumerate(tasks):
            by_name.setdefault(str(t["task"]), i)
        edges = []
        for link in row.get("task_links", []):
            a, b = link["source"], link["target"]
            u = a if isinstance(a, int) else by_name.get(str(a))
            v = b if isinstance(b, int) else by_name.get(str(b))
            if u is not None and v is not None and u != v:
                edges.append((u, v))
        items.append(Item(id=str(row.get("id", k)), request=str(row["user_request"]),
                          shape=str(row.get("type", "taskbench")), gold=Graph(nodes, sorted(set(edges))),
                          tools=catalogue, gold_tools=frozenset(tool_name("taskbench", str(t["task"]))
                                                                for t in tasks)))
    return items
