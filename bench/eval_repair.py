"""A 20-request plan-repair check, before and after the deterministic repair.

The planner's answers are scripted on the provider simulator the way a small model
failed (so the run is the same every time): a self-dependency
or an index past the end that survives the repair call (7 requests), a cycle the repair
call fixes (3), a cycle it does not fix (2), and valid plans (8). Both runs go through the
whole pipeline (compound's eval runner, the executor, litellm over HTTP to the simulator);
"before" turns the deterministic repair off. Run: .venv/bin/python bench/eval_repair.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compound.core.settings import ModelConfig, Settings  # noqa: E402
from compound.evals.datasets import load  # noqa: E402
from compound.evals.runner import EvalRun, summarize  # noqa: E402
from compound.evals.similarity import LexicalMatcher  # noqa: E402
from compound.llm.litellm_client import LiteLLMClient  # noqa: E402
from compound.llm.pricing import price_of  # noqa: E402
from compound.simulator import SimulatorThread, plan_for  # noqa: E402

MODELS = ["anthropic/claude-haiku-4-5", "anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-5"]


def broken(plan: dict[str, Any], fault: str) -> str:
    subs = [dict(s, depends_on=list(s["depends_on"])) for s in plan["subtasks"]]
    n = len(subs)
    if fault == "self":
        subs[-1]["depends_on"].append(n - 1)
    elif fault == "range":
        subs[0]["depends_on"].append(n + 2)
    elif fault == "self+range+dup":
        subs[-1]["depends_on"] += [n - 1, n + 5, *subs[-1]["depends_on"][:1]]
        subs[0]["depends_on"].append(0)
    elif fault == "cycle":
        subs.append({"description": "Check the result", "tier_hint": 1, "depends_on": [0]})
        subs[0]["depends_on"].append(len(subs) - 1)
    return json.dumps({"reasoning": plan.get("reasoning"), "subtasks": subs})


# (first answer's fault, repair answer's fault); None = a valid plan
SCRIPT: list[tuple[str | None, str | None]] = (
    [("self", "self"), ("range", "range"), ("self+range+dup", "self"), ("range", "self"), ("self", "range"),
     ("self+range+dup", "self+range+dup"), ("range", "range")]
    + [("cycle", None)] * 3 + [("cycle", "cycle")] * 2 + [(None, None)] * 8
)


def no_repair(data: Any, *, tools: Collection[str] | None = None) -> tuple[Any, list[str]]:  # noqa: ARG001
    """The planner's repair turned off: the plan as the model gave it, no fixes."""
    return data, []


async def one_run(items: list[Any], *, deterministic: bool) -> dict[str, Any]:
    import compound.planner.decompose as decompose_module

    server = SimulatorThread().start()
    try:
        settings = Settings(planner_model=MODELS[0], tier1_models=[MODELS[0]], tier2_models=[MODELS[1]],
                            tier3_models=[MODELS[2]], models={m: ModelConfig(api_base=server.url) for m in MODELS},
                            retry_initial_wait_s=0.0, retry_max_wait_s=0.0)
        run = EvalRun(settings=settings, client=LiteLLMClient(settings), matcher=LexicalMatcher(),
                      price_of=lambda m: price_of(m, settings), concurrency=1)
        repair = contextlib.nullcontext() if deterministic else \
            mock.patch.object(decompose_module, "repair_plan", no_repair)
        results = []
        with repair:
            for item, (first, second) in zip(items, SCRIPT, strict=True):
                # one item at a time, each with its own two scripted planner answers: the
                # second is what the model answers if (and only if) it is asked to repair
                plan = plan_for(item.request, 6)
                server.sim.script.answers["planner"] = [broken(plan, first) if first else json.dumps(plan),
                                                        broken(plan, second) if second else json.dumps(plan)]
                results += await run.run([item])
        return summarize(results, matcher="lexical-dice", dataset="own[20]", fmt="own", settings=settings,
                         judge_model=None)
    finally:
        server.stop()


def main() -> None:
    items = load(ROOT / "evals" / "datasets" / "own.jsonl", "own")[:20]
    rows = []
    for label, deterministic in (("before (model repair only)", False), ("after (deterministic first)", True)):
        s = asyncio.run(one_run(items, deterministic=deterministic))
        rows.append((label, s))
    print(f"{'run':<30} {'valid':>6} {'valid_rate':>10} {'fallback_rate':>13} {'repair calls':>12} {'fixes':>6} "
          f"{'cost $':>9}")
    for label, s in rows:
        print(f"{label:<30} {round(s['valid_rate'] * s['n']):>3}/{s['n']:<2} {s['valid_rate']:>10.2f} "
              f"{s['fallback_rate']:>13.2f} {s['repairs']:>12} {s['fixes']:>6} {s['cost_usd']:>9.5f}")


if __name__ == "__main__":
    main()
