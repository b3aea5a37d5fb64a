"""Deterministic plan repair: fix without a model what needs none (what small models
get wrong: indices as text, junk in `depends_on`, tiers out of range, empty or
duplicate subtasks, a bare list for a plan), and say what was fixed.

Every warning starts with its kind and a colon (`KINDS`), so the evals can count fixes
by kind (`kind_of`) and a person reads one sentence."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

# The kinds of warning the planner writes into a task's `warnings`, in the order a
# repair meets them. "fallback" and "missing join" come from the decomposer.
KINDS = (
    "plan as a list",
    "subtask as text",
    "empty subtask",
    "reasoning not text",
    "tier as text",
    "tier out of range",
    "tier not a number",
    "depends_on not a list",
    "dependency as text",
    "dependency not an index",
    "self-dependency",
    "dependency out of range",
    "duplicate dependency",
    "duplicate subtask",
    "tools not a list",
    "unknown tool",
    "kind inferred",
    "arguments missing",
    "missing join",
    "fallback",
    "streamed plan cut",
)
# A tier the model gave as something that is no number: balanced, not assumed cheap.
UNKNOWN_TIER = 2
# Keys a small model uses for the list of subtasks when it does not say `subtasks`.
_LIST_KEYS = ("steps", "tasks", "plan")
_INT_TEXT = re.compile(r"[+-]?\d+")


def kind_of(warning: str) -> str:
    """The kind a planner warning names (its text before the first colon), or "other"."""
    head = warning.split(":", 1)[0]
    return head if head in KINDS else "other"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any) -> int | None:
    """An integer written as text ("2", " 2 ") or as a whole float (2.0); else None."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Repair:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.quiet = False  # a change that needs no warning (a null read as the default)
        self.optional: set[tuple[int, int]] = set()  # (subtask, dependency) marked not required

    def entries(self, i: int, deps: list[int]) -> list[Any]:
        """Subtask i's dependencies as PlanIn writes them (optional ones as objects)."""
        return [{"index": d, "required": False} if (i, d) in self.optional else d for d in deps]

    def warn(self, kind: str, text: str) -> None:
        self.warnings.append(f"{kind}: {text}")

    def tier(self, i: int, item: dict[str, Any]) -> dict[str, Any]:
        if "tier_hint" not in item:
            return item
        if item["tier_hint"] is None:  # as if absent: the contract's default applies
            self.quiet = True
            return {k: v for k, v in item.items() if k != "tier_hint"}
        tier = item["tier_hint"]
        if not _is_int(tier):
            read = _as_int(tier)
            if read is None:
                self.warn("tier not a number", f"subtask {i} had tier_hint {_show(tier)}; "
                          f"it runs on tier {UNKNOWN_TIER}")
                return {**item, "tier_hint": UNKNOWN_TIER}
            self.warn("tier as text", f"subtask {i} had tier_hint {_show(tier)}; read as {read}")
            tier = read
        if not 1 <= tier <= 3:
            clamped = min(3, max(1, tier))
            self.warn("tier out of range", f"subtask {i} had tier_hint {tier}; clamped to {clamped}")
            tier = clamped
        return {**item, "tier_hint": tier}

    def step(self, i: int, item: dict[str, Any], tools: Collection[str] | None) -> dict[str, Any]:
        """Section 11's fields: a tool name for the list is read as the list; a tool the
        catalogue lacks is dropped from `tools`; a subtask naming a `tool` with no kind is
        a direct call; a direct call's missing arguments are none. A direct call of an
        unknown tool is left for validation (dropping it would leave a step that does nothing)."""
        out = item
        named = item.get("tools")
        if isinstance(named, str):
            pieces = [p.strip() for p in named.split(",") if p.strip()]
            self.warn("tools not a list", f"subtask {i} had tools {_show(named)}; read as a list of {len(pieces)}")
            out = {**out, "tools": pieces}
            named = pieces
        if tools is not None and isinstance(named, list):
            kept = [t for t in named if isinstance(t, str) and t in tools]
            for t in named:
                if t not in kept:
                    self.warn("unknown tool", f"subtask {i} named tool {_show(t)}, which no configured server "
                              "offers; it was dropped")
            if len(kept) != len(named):
                out = {**out, "tools": kept}
        if out.get("kind") is None and isinstance(out.get("tool"), str):
            self.warn("kind inferred", f"subtask {i} named tool {_show(out['tool'])} without a kind; "
                      'read as a direct call ("kind": "tool")')
            out = {**out, "kind": "tool"}
        if out.get("kind") == "tool" and out.get("arguments") is None:
            self.warn("arguments missing", f"subtask {i} calls {_show(out.get('tool'))} without arguments; "
                      "called with none ({})")
            out = {**out, "arguments": {}}
        return out

    def depends(self, i: int, item: dict[str, Any], n: int) -> list[int]:
        raw = item.get("depends_on")
        if raw is None:
            return []
        if not isinstance(raw, list):
            pieces: list[Any] = raw.split(",") if isinstance(raw, str) else [raw]
            pieces = [p for p in pieces if not (isinstance(p, str) and not p.strip())]
            self.warn("depends_on not a list", f"subtask {i} had depends_on {_show(raw)}; read as a list of "
                      f"{len(pieces)}")
            raw = pieces
        kept: list[int] = []
        for d in raw:
            required = True
            if isinstance(d, dict) and "index" in d:  # {"index": i, "required": false}
                required = d.get("required", True) is not False
                d = d["index"]
            index = d if _is_int(d) else _as_int(d)
            if index is None:
                self.warn("dependency not an index", f"subtask {i} depended on {_show(d)}, which is not "
                          "a subtask index; that dependency was dropped")
                continue
            if not _is_int(d):
                self.warn("dependency as text", f"subtask {i} depended on {_show(d)}; read as {index}")
            if index == i:
                self.warn("self-dependency", f"subtask {i} depended on itself; that dependency was dropped")
            elif not 0 <= index < n:
                self.warn("dependency out of range", f"subtask {i} depended on {index}, but the plan has "
                          f"{n} subtasks; that dependency was dropped")
            elif index in kept:
                self.warn("duplicate dependency", f"subtask {i} listed dependency {index} twice; "
                          "the duplicate was dropped")
                if required:
                    self.optional.discard((i, index))
            else:
                kept.append(index)
                if not required:
                    self.optional.add((i, index))
        return kept


def repair_plan(data: Any, *, tools: Collection[str] | None = None) -> tuple[Any, list[str]]:
    """(repaired data, one warning per fix). Pure: `data` is not changed. What it
    cannot fix safely (cycles, too many subtasks, an item that is neither an object nor
    text) is left as it is for validation to report and the model to repair.
    `tools`: the catalogue's tool names; a plan's other tools are dropped (None: kept).

    Indices in the warnings are the model's own. Empty subtasks are dropped and their
    dependents inherit their dependencies; a subtask whose description repeats an
    earlier one's is merged into it (dependencies joined, the higher tier kept); every
    index is then renumbered."""
    r = _Repair()
    if isinstance(data, list):
        r.warn("plan as a list", "the answer was a bare list; read as the plan's subtasks")
        data = {"subtasks": data}
    if not isinstance(data, dict):
        return data, []
    if not isinstance(data.get("subtasks"), list):
        found = [k for k in _LIST_KEYS if isinstance(data.get(k), list)]
        if "subtasks" in data or not found:
            return data, r.warnings
        r.warn("plan as a list", f"the plan's list was named {found[0]!r}; read as its subtasks")
        data = {**{k: v for k, v in data.items() if k != found[0]}, "subtasks": data[found[0]]}
    out: dict[str, Any] = dict(data)
    reasoning = out.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        r.warn("reasoning not text", f"'reasoning' was {_show(reasoning)}; it was dropped")
        del out["reasoning"]

    items: list[Any] = list(data["subtasks"])
    n = len(items)
    if not all(isinstance(it, dict | str) for it in items):
        return _fixed(data, out, items, r)  # validation names the item; renumbering could mislead
    subs: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            r.warn("subtask as text", f"subtask {i} was only text; read as its description")
            item = {"description": item}
        subs.append(item)
    empty = {i for i, s in enumerate(subs)
             if not isinstance(s.get("description"), str) or not s["description"].strip()}
    for i in sorted(empty):
        r.warn("empty subtask", f"subtask {i} had no description; it was dropped")
    if len(empty) == n:
        return {**out, "subtasks": []}, r.warnings  # nothing left: validation says so
    fixed = [r.step(i, r.tier(i, s), tools) for i, s in enumerate(subs)]
    deps = [r.depends(i, s, n) for i, s in enumerate(subs)]
    if not empty and not _duplicates(subs):
        return _fixed(data, out, [{**s, "depends_on": r.entries(i, d)}
                                  for i, (s, d) in enumerate(zip(fixed, deps, strict=True))], r)
    return _fixed(data, out, _renumber(fixed, deps, empty, r), r)


def _key(description: str) -> str:
    return " ".join(description.lower().split())


def _duplicates(subs: list[dict[str, Any]]) -> bool:
    keys = [_key(s["description"]) for s in subs if isinstance(s.get("description"), str) and s["description"].strip()]
    return len(keys) != len(set(keys))


def _renumber(subs: list[dict[str, Any]], deps: list[list[int]], empty: set[int], r: _Repair) -> list[dict[str, Any]]:
    """Drop the empty subtasks (their dependents inherit their dependencies), merge
    repeated descriptions into their first, renumber."""
    first: dict[str, int] = {}
    into: dict[int, int] = {}  # model index -> the model index it stands for
    for i, s in enumerate(subs):
        if i in empty:
            continue
        key = _key(s["description"])
        if key in first:
            into[i] = first[key]
            r.warn("duplicate subtask", f"subtask {i} repeated subtask {first[key]}'s description; "
                   f"merged into {first[key]}")
        else:
            first[key] = i
            into[i] = i

    def resolve(d: int, seen: frozenset[int]) -> set[int]:
        if d not in empty:
            return {into[d]}
        if d in seen:
            return set()
        found: set[int] = set()
        for e in deps[d]:
            found |= resolve(e, seen | {d})
        return found

    kept = [i for i in range(len(subs)) if i not in empty and into[i] == i]
    new = {old: k for k, old in enumerate(kept)}
    merged: dict[int, list[int]] = {i: [] for i in kept}
    # a merged dependency stays optional only if every subtask merged here had it so directly
    required: set[tuple[int, int]] = set()
    tiers: dict[int, Any] = {i: subs[i].get("tier_hint") for i in kept}
    for i in range(len(subs)):
        if i in empty:
            continue
        target = into[i]
        for d in deps[i]:
            for t in sorted(resolve(d, frozenset())):
                if d in empty or (i, d) not in r.optional:
                    required.add((target, t))
                if t != target and t not in merged[target]:
                    merged[target].append(t)
        if target != i:
            a, b = tiers[target], subs[i].get("tier_hint")
            tiers[target] = max(a, b) if _is_int(a) and _is_int(b) else (a if a is not None else b)
    out = []
    for i in kept:
        s = {**subs[i], "depends_on": [new[t] if (i, t) in required else {"index": new[t], "required": False}
                                       for t in merged[i]]}
        if tiers[i] is not None:
            s["tier_hint"] = tiers[i]
        out.append(s)
    return out


def _fixed(data: Any, out: dict[str, Any], subtasks: list[Any], r: _Repair) -> tuple[Any, list[str]]:
    if not r.warnings and not r.quiet:
        return data, []
    return {**out, "subtasks": subtasks}, r.warnings
