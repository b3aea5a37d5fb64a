"""Rich renderings of a task snapshot: a live tree of subtasks (status, model, tier,
elapsed, cost) and a final cost table per model and tier."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from compound.cli.output import clip

COLOURS = {"pending": "dim", "running": "yellow", "completed": "green", "failed": "red",
           "skipped": "magenta", "canceled": "red", "queued": "dim", "planning": "cyan",
           "planned": "cyan", "executing": "yellow", "partial": "yellow", "awaiting_approval": "bright_magenta"}


def _elapsed(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    a = datetime.fromisoformat(start.replace("Z", "+00:00"))
    b = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else datetime.now(a.tzinfo)
    return f"{(b - a).total_seconds():.1f}s"


def render_snapshot(snap: dict[str, Any]) -> Tree:
    status = snap["status"]
    head = Text.assemble((f"{snap['id']} ", "bold"), (status, COLOURS.get(status, "")),
                         f"  ${snap['total_cost_usd']:.6f} of ${snap['budget_usd']:g}")
    tree = Tree(head)
    for s in snap["subtasks"]:
        optional = set(s.get("optional_depends_on") or [])  # marked `?`: runs without them
        deps = (f" ← {','.join(f'{d}?' if d in optional else str(d) for d in s['depends_on'])}"
                if s["depends_on"] else "")
        line = Text.assemble(
            (f"[{s['index']}] ", "bold"), (f"{s['status']:<9}", COLOURS.get(s["status"], "")),
            f" t{s['tier_assigned']} {s['model'] or '-'}  {_elapsed(s['started_at'], s['completed_at']):>6}"
            f"  ${s['cost_usd']:.6f}  {clip(s['description'], 50)}{deps}")
        node = tree.add(line)
        if s.get("reused_from"):
            node.add(Text(f"reused from {s['reused_from']} (no call)", style="dim"))
        for c in s.get("tool_calls") or []:  # held for a person: what to run to decide
            if c["status"] == "awaiting_approval":
                node.add(Text(f"awaiting approval: {c['tool']} {clip(json.dumps(c['arguments']), 80)} "
                              f"(compound tasks approve-call | deny-call {snap['id']} {c['id']})",
                              style="bright_magenta"))
        if s.get("error"):
            node.add(Text(clip(s["error"], 160), style="red"))
        if s.get("worst_case"):
            w = s["worst_case"]
            node.add(Text(f"${w['cost_usd']:.6f} of it booked at the worst case ({w['calls']} call(s) lost or "
                          "canceled in flight)", style="yellow"))
    for warning in snap.get("warnings") or []:  # plan fixes made without a model
        tree.add(Text(f"warning: {warning}", style="yellow"))
    return tree


def cost_parts(snap: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(part, model, its calls) for every part of a task that made calls: the planner,
    each subtask (as "tier N"), the synthesis. Their costs add up to the task's total."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    planner = snap.get("planner")
    if planner and planner.get("calls", 1):
        rows.append(("planner", planner["model"] or "-", planner))
    for s in snap["subtasks"]:
        if s["attempts"] or s["cost_usd"]:
            rows.append((f"tier {s['tier_assigned']}", s["model"] or "-",
                         {**s, "calls": s["attempts"], "part": f"subtask {s['index']}"}))
    synthesis = snap.get("synthesis")
    if synthesis:
        rows.append(("synthesis", synthesis["model"] or "-", synthesis))
    return rows


def cost_table(snap: dict[str, Any]) -> Group:
    """The task's cost by model and by tier (planner, tier N, synthesis: each its own row), then the calls
    booked at their worst case, when there are any."""
    by_model: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    by_part: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    worst_rows: list[tuple[str, dict[str, Any]]] = []
    for part, model, p in cost_parts(snap):
        for bucket in (by_model[model], by_part[part]):
            bucket[0] += p.get("calls", 1)
            bucket[1] += p["input_tokens"]
            bucket[2] += p["output_tokens"]
            bucket[3] += p["cost_usd"]
        if p.get("worst_case"):
            worst_rows.append((p.get("part", part), p["worst_case"]))
    tables: list[Any] = []
    order = {"planner": 0, "synthesis": 2}
    for title, data in (("by model", by_model), ("by tier", by_part)):
        t = Table("", "calls", "input tokens", "output tokens", "cost $", title=f"cost {title}")
        for key, (n, i, o, c) in sorted(data.items(), key=lambda kv: (order.get(kv[0], 1), kv[0])):
            t.add_row(Text(key), str(int(n)), str(int(i)), str(int(o)), f"{c:.6f}")
        tables.append(t)
    if worst_rows:
        t = Table("", "calls", "cost $", title="booked at the worst case")
        for part, w in worst_rows:
            t.add_row(Text(part), str(w["calls"]), f"{w['cost_usd']:.6f}")
        tables.append(t)
        w = snap.get("worst_case") or {}
        tables.append(Text(f"worst case: {w.get('calls', 0)} call(s), ${w.get('cost_usd', 0.0):.6f} of the total: "
                           "lost in a crash or a timeout, or canceled in flight, their real cost is unknown, "
                           "so each counts at the most it could have cost (its reservation)", style="yellow"))
    tables.append(Text(f"total ${snap['total_cost_usd']:.6f} of ${snap['budget_usd']:g}"))
    return Group(*tables)
