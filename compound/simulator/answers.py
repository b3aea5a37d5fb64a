"""The simulated model's answers: a prompt's kind, and a plausible plan, result or
synthesis worked out from the prompt's own text."""

from __future__ import annotations

import json
import math
import re
from typing import Any

KINDS = {
    "You are compound's planner.": "planner",
    "You are compound's worker.": "worker",
    "You are compound's synthesizer.": "synthesizer",
    "You are compound's checker.": "checker",
}


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


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


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

