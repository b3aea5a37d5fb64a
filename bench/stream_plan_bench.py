"""Streamed plans against whole plans: time from submit to the first subtask running,
and makespan, for a 10-subtask plan written by a planner streaming at ~50 tokens/s.

    .venv/bin/python bench/stream_plan_bench.py [--repeats 3] [--write docs/benchmarks.md]

Side by side in one run, alternating, on the same scripted plan and latencies: the
real Executor on a SQLite file, its model calls over HTTP through the Anthropic
adapter to the simulator (compound/simulator/), which streams the planner's
answer piece by piece at `--token-s` seconds per token and answers each subtask call
after `--worker-s` seconds.
  streamed   COMPOUND_STREAM_PLANS=true: entries start as they arrive
  whole      COMPOUND_STREAM_PLANS=false: the plan is read whole, then run
The plan: three chains of three steps and a join of the chains' ends (10 subtasks).
Times come from the task's snapshot (created_at, each subtask's started_at,
completed_at); the plan's time is the planner call's, from submit to its last token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compound.core.settings import ModelConfig, Settings
from compound.executor.service import Executor
from compound.llm import build_client
from compound.simulator import SimulatorThread
from compound.store import open_store

MODEL = "anthropic/claude-haiku-4-5"


def plan_text() -> str:
    subtasks: list[dict[str, Any]] = []
    for chain, topic in enumerate(("the SQLite option", "the PostgreSQL option", "the DuckDB option")):
        first = 3 * chain
        subtasks += [
            {"description": f"List the main strengths of {topic} for a small team", "tier_hint": 1, "depends_on": []},
            {"description": f"List the main weaknesses of {topic} given its strengths", "tier_hint": 1,
             "depends_on": [first]},
            {"description": f"Write a short verdict on {topic} from its strengths and weaknesses", "tier_hint": 1,
             "depends_on": [first + 1]},
        ]
    subtasks.append({"description": "Recommend one option from the three verdicts", "tier_hint": 1,
                     "depends_on": [2, 5, 8]})
    return json.dumps({"reasoning": "Three options, each weighed in three steps; then a recommendation.",
                       "subtasks": subtasks})


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def one_run(sim: SimulatorThread, *, streamed: bool, token_s: float, worker_s: float,
                  db: Path) -> dict[str, float]:
    sim.sim.reset()
    sim.sim.script.token_s = {"planner": token_s}
    sim.sim.script.latency = lambda _m, kind, _t: worker_s if kind == "worker" else 0.0
    text = plan_text()
    sim.sim.answer("planner", text)
    settings = Settings(database_url=f"sqlite:///{db}", planner_model=MODEL, tier1_models=[MODEL],
                        tier2_models=[MODEL], tier3_models=[MODEL], synthesis_tier=1,
                        models={MODEL: ModelConfig(api_base=sim.url)}, stream_plans=streamed,
                        planner_max_tokens=4096, max_replans=0)
    async with open_store(settings.database_url) as store:
        ex = Executor(settings=settings, store=store, client=build_client(settings))
        task = await store.create_task(prompt="Which database should a small team pick?", budget_usd=5.0)
        await ex.run_task(task.id)
        snap = await store.snapshot(task.id)
        await ex.stop()
    if snap["status"] != "completed":
        raise SystemExit(f"the bench task ended {snap['status']}: {snap['error']}")
    created = _ts(snap["created_at"])
    (planner,) = sim.sim.calls("planner")
    starts = [_ts(s["started_at"]) for s in snap["subtasks"]]
    return {"first": min(starts) - created, "plan": planner["ended_at"] - created,
            "makespan": _ts(snap["completed_at"]) - created, "subtasks": float(len(starts))}


async def main_async(args: argparse.Namespace) -> str:
    sim = SimulatorThread().start()
    results: dict[str, list[dict[str, float]]] = {"whole": [], "streamed": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                for mode in ("whole", "streamed") if r % 2 == 0 else ("streamed", "whole"):
                    db = Path(tmp) / f"{mode}-{r}.db"
                    results[mode].append(await one_run(sim, streamed=mode == "streamed", token_s=args.token_s,
                                                       worker_s=args.worker_s, db=db))
    finally:
        sim.stop()

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    plan_s = med("whole", "plan")
    rows = []
    for mode in ("whole", "streamed"):
        rows.append(f"| {mode} | {int(med(mode, 'subtasks'))} | {med(mode, 'plan'):.2f} | {med(mode, 'first'):.2f} | "
                    f"{med(mode, 'first') / plan_s:.2f} | {med(mode, 'makespan'):.2f} | "
                    f"{med(mode, 'makespan') / med('whole', 'makespan'):.2f} |")
    load = os.getloadavg()[0]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["bench/stream_plan_bench.py", f"--repeats {args.repeats}", f"--token-s {args.token_s:g}",
                    f"--worker-s {args.worker_s:g}", *(["--write docs/benchmarks.md"] if args.write else [])])
    return (f"Measured {when} on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load:.1f} at the start, median of {args.repeats} runs of each, with:\n\n"
            f"    .venv/bin/python {cmd}\n\n"
            "| plan | subtasks | planner call (s) | submit to first subtask running (s) | first / whole plan's time "
            "| makespan (s) | makespan / whole |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--token-s", type=float, default=0.02, help="seconds per planner token (0.02: 50 tokens/s)")
    parser.add_argument("--worker-s", type=float, default=1.0, help="seconds per subtask call")
    parser.add_argument("--write", type=Path, default=None, help="rewrite this file's section (docs/benchmarks.md)")
    args = parser.parse_args()
    body = asyncio.run(main_async(args))
    print(body)
    if args.write:
        from bench.servers import write_section

        write_section(args.write, "stream_plan_bench", "Streamed plans: first subtask and makespan", body)


if __name__ == "__main__":
    main()
