"""An eval's report: results.jsonl (one line per item), report.md (tables) and PNG plots
(matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from compound.evals.runner import ItemResult


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def quality(r: ItemResult) -> float:
    """One number per item for the plots: graph F1 when there is a gold graph, else the
    share of expected properties that hold; 0 for an item without a plan."""
    if r.graph_f1 is not None:
        return r.graph_f1
    if r.checks:
        return sum(r.checks.values()) / len(r.checks)
    return 0.0


def write(out: Path, results: list[ItemResult], summary: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.as_json(), ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plots = _plots(out, results)
    (out / "report.md").write_text(_markdown(results, summary, plots), encoding="utf-8")
    return [out / "report.md", out / "results.jsonl", out / "summary.json", *plots]


def _markdown(results: list[ItemResult], s: dict[str, Any], plots: list[Path]) -> str:
    lines = [f"# compound eval: {s['dataset']} ({s['format']})", ""]
    lines += ["| measure | value |", "|---|---|"]
    for key in ("n", "valid_rate", "fallback_rate", "completed_rate", "repairs", "fixes", "missing_joins",
                "node_f1", "edge_f1", "chain_f1",
                "graph_f1", "tool_precision", "tool_recall", "tool_f1",
                "matcher", "parallelism", "mean_subtasks", "properties_pass_rate", "checks_pass_rate",
                "cost_usd", "strong_tier_cost_usd", "cost_ratio", "strong_model"):
        lines.append(f"| {key} | {_fmt(s.get(key))} |")
    m = s["models"]
    lines += ["", f"Models: planner `{m['planner']}`; tier 1 `{', '.join(m['tier1'])}`; "
                  f"tier 2 `{', '.join(m['tier2'])}`; tier 3 `{', '.join(m['tier3'])}`; "
                  f"synthesis tier {m['synthesis_tier']}."]
    if s["matcher"]:
        lines.append(f"Step matching: `{s['matcher']}`.")
    if s.get("structured_output"):
        forms = ", ".join(f"`{m}`: {f}" for m, f in sorted(s["structured_output"].items()))
        lines.append(f"Structured output accepted: {forms}.")
    if s.get("fixes_by_kind"):
        lines += ["", "## Fixes made without a model, by kind", "", "| kind | fixes |", "|---|---|"]
        lines += [f"| {_cell(k)} | {v} |" for k, v in s["fixes_by_kind"].items()]
    if s.get("judge"):
        j = s["judge"]
        lines += ["", f"## Judged by `{j['model']}` against one direct call to `{s['strong_model']}`", "",
                  "| win | tie | loss | error | compound $ | direct $ | judge $ |", "|---|---|---|---|---|---|---|",
                  f"| {j['win']} | {j['tie']} | {j['loss']} | {j['error']} | {_fmt(j['compound_cost_usd'])} "
                  f"| {_fmt(j['direct_cost_usd'])} | {_fmt(j['judge_cost_usd'])} |"]
    by_shape: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_shape[r.shape or "-"].append(r)
    lines += ["", "## By shape", "",
              "| shape | n | valid | fallback | properties hold | mean subtasks | parallelism | cost $ |",
              "|---|---|---|---|---|---|---|---|"]
    for shape, rs in sorted(by_shape.items()):
        valid = [r for r in rs if r.valid]
        checked = [r for r in rs if r.checks]
        props = _fmt(sum(all(r.checks.values()) for r in checked) / len(checked)) if checked else "n/a"
        par = [r.parallelism for r in valid if r.parallelism is not None]
        lines.append(f"| {_cell(shape)} | {len(rs)} | {len(valid)} | {sum(r.fallback for r in rs)} | {props} | "
                     f"{_fmt(sum(len(r.subtasks) for r in valid) / len(valid) if valid else None)} | "
                     f"{_fmt(sum(par) / len(par) if par else None)} | {_fmt(sum(r.cost_usd for r in rs))} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Items", "", "| id | shape | status | subtasks | width | quality | failed checks | cost $ | "
              "strong-tier $ |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        failed = ", ".join(k for k, ok in r.checks.items() if not ok)
        lines.append(f"| {_cell(r.id)} | {_cell(r.shape)} | {r.status} | {len(r.subtasks)} | {r.width} | "
                     f"{_fmt(quality(r))} | {_cell(failed)} | {_fmt(r.cost_usd)} | {_fmt(r.strong_tier_cost_usd)} |")
    return "\n".join(lines) + "\n"


def _plots(out: Path, results: list[ItemResult]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    graded = [r for r in results if r.graph_f1 is not None]
    if graded:
        for name in ("node_f1", "edge_f1", "chain_f1", "graph_f1"):
            ax.hist([getattr(r, name) for r in graded], bins=10, range=(0, 1), alpha=0.5, label=name)
        ax.set_xlabel("F1")
        ax.legend()
    else:
        ax.hist([quality(r) for r in results], bins=10, range=(0, 1))
        ax.set_xlabel("share of expected properties that hold")
    ax.set_ylabel("items")
    ax.set_title("plan quality")
    fig.tight_layout()
    paths.append(out / "quality.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([r.cost_usd for r in results], [quality(r) for r in results], label="routed", s=14)
    ax.scatter([r.strong_tier_cost_usd for r in results], [quality(r) for r in results],
               label="same calls, strongest tier", s=14, marker="x")
    ax.set_xlabel("cost per item (USD)")
    ax.set_ylabel("quality")
    ax.set_title("cost against quality")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "cost_quality.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
