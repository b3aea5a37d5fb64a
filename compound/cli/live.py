"""Rich renderings of a task snapshot: a live tree of subtasks (status, model, tier,
elapsed, cost) and a final cost table per model and tier."""

from __future__ import annotations

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
           "planned": "cyan", "executing": "yellow", "partial": "yellow"}


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
        deps = f" ← {','.join(map(str, s['depends_on']))}" if s["depends_on"] else ""
        line = Text.assemble(
            (f"[{s['index']}] ", "bold"), (f"{s['status']:<9}", COLOURS.get(s["status"], "")),
            f" t{s['tier_assigned']} {s['model'] or '-'}  {_elapsed(s['started_at'], s['completed_at']):>6}"
            f"  ${s['cost_usd']:.6f}  {clip(s['description'], 50)}{deps}")
        node = tree.add(line)
        if s.get("error"):
            node.add(Text(clip(s["error"], 160), style="red"))
    for warning in snap.get("warnings") or []:  # plan fixes made without a model
        tree.add(Text(f"warning: {warning}", style="yellow"))
    return tree


def cost_table(snap: dict[str, Any]) -> Group:
    by_model: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    by_tier: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    rows = [(s["model"] or "-", f"tier {s['tier_assigned']}", s) for s in snap["subtasks"]]
    planner = snap.get("planner")
    if planner:
        rows.append((planner["model"] or "-", "planner", {"cost_usd": planner["cost_usd"],
                     "input_tokens": planner["input_tokens"], "output_tokens": planner["output_tokens"]}))
    for model, tier, s in rows:
        for bucket in (by_model[model], by_tier[tier]):
            bucket[0] += 1
            bucket[1] += s["input_tokens"]
            bucket[2] += s["output_tokens"]
            bucket[3] += s["cost_usd"]
    tables = []
    for title, data in (("by model", by_model), ("by tier", by_tier)):
        t = Table("", "calls", "input tokens", "output tokens", "cost $", title=f"cost {title}")
        for key, (n, i, o, c) in sorted(data.items()):
            t.add_row(Text(key), str(int(n)), str(int(i)), str(int(o)), f"{c:.6f}")
        tables.append(t)
    synth = snap["total_cost_usd"] - sum(v[3] for v in by_model.values())
    return Group(*tables, Text(f"synthesis and lost/canceled calls: ${max(0.0, synth):.6f}; "
                               f"total ${snap['total_cost_usd']:.6f} of ${snap['budget_usd']:g}"))
