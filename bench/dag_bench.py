"""Benchmarks of the executor: makespan against the critical path, and
orchestration overhead per subtask, with every transition committed to SQLite.

    .venv/bin/python bench/dag_bench.py [--write docs/benchmarks.md]

Side by side in one run, on the same DAGs and the same simulated latencies:
  eager     compound's Executor (store-backed, eager dispatch), its writes committed from
            its own loop as in the executor's process (`compound serve`'s default);
            the overhead is also measured with every write handed to the store's writer
            thread, as when the executor runs on the server's loop
            (COMPOUND_EXECUTOR_PROCESS=false)
  waves     a wave-barrier baseline (each wave waits for its slowest member), the
            way LangGraph's supersteps run a DAG; in memory, nothing persisted
Model calls are an in-process fake that sleeps the subtask's latency, so the numbers
measure orchestration, not a network.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import write_section
from compound.core.settings import Settings
from compound.llm.base import (
    Completion,
    Message,
    Price,
    StreamEvent,
    ToolChoice,
    ToolSpec,
    Usage,
)
from compound.planner.plan import PlanIn, waves
from compound.store import open_store
from compound.store.models import TaskStatus

PRICE = Price(input=1e-6, output=5e-6)
MODEL = "anthropic/claude-haiku-4-5"


class SleepLLM:
    """Answers at once after sleeping the latency written in the subtask's text
    (`[ms=NNN]`); the synthesis call answers at once."""

    def __init__(self) -> None:
        self.calls = 0

    async def warm(self) -> None:
        """Nothing to warm."""

    async def aclose(self) -> None:
        """Nothing held."""

    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        self.calls += 1
        text = messages[-1]["content"]
        ms = 0
        if "compound's worker" in messages[0]["content"]:
            start = text.find("[ms=")
            if start >= 0:
                ms = int(text[start + 4 : text.index("]", start)])
        if ms:
            await asyncio.sleep(ms / 1000)
        usage = Usage(input_tokens=10, output_tokens=5)
        return Completion(text="ok", model=model, usage=usage, cost_usd=PRICE.cost(usage))

    async def stream(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[StreamEvent]:
        """The same answer as `complete()`, in one piece."""
        yield await self.complete(model=model, messages=messages, max_tokens=max_tokens,
                                  json_schema=json_schema, timeout_s=timeout_s)


def make_plan(latencies_ms: list[int], deps: list[list[int]]) -> dict[str, Any]:
    return {
        "reasoning": "benchmark",
        "subtasks": [
            {"description": f"step {i} [ms={ms}]", "tier_hint": 1, "depends_on": d}
            for i, (ms, d) in enumerate(zip(latencies_ms, deps, strict=True))
        ],
    }


def critical_path_s(latencies_ms: list[int], deps: list[list[int]]) -> float:
    finish: list[float] = []
    for i, ms in enumerate(latencies_ms):  # plans here are in topological order
        finish.append(max((finish[d] for d in deps[i]), default=0.0) + ms / 1000)
    return max(finish)


def skewed_dag() -> tuple[list[int], list[list[int]]]:
    """One long root (400 ms) beside a chain of four 100 ms steps, then a join."""
    lat = [400, 100, 100, 100, 100, 50]
    deps: list[list[int]] = [[], [], [1], [2], [3], [0, 4]]
    return lat, deps


def fanout_dag(width: int = 50, seed: int = 7) -> tuple[list[int], list[list[int]]]:
    """A root, `width` parallel steps of 20..300 ms, then a join."""
    rng = random.Random(seed)
    lat = [50] + [rng.randint(20, 300) for _ in range(width)] + [50]
    deps: list[list[int]] = [[]] + [[0] for _ in range(width)] + [list(range(1, width + 1))]
    return lat, deps


def layered_dag(n: int, seed: int = 11) -> tuple[list[int], list[list[int]]]:
    """n subtasks, each depending on up to two earlier ones (a random DAG)."""
    rng = random.Random(seed)
    deps: list[list[int]] = []
    for i in range(n):
        k = min(i, rng.choice((0, 1, 1, 2)))
        deps.append(sorted(rng.sample(range(max(0, i - 20), i), k)) if k else [])
    return [0] * n, deps


async def run_eager(
    latencies_ms: list[int], deps: list[list[int]], db: Path, *, loop_writer: bool = True
) -> tuple[float, int, float]:
    """Wall seconds, model calls, and CPU seconds of the process (every thread: the
    loop, the store's writer and readers) for one task; written from this loop as the
    executor's process writes (`loop_writer`), or through the store's writer thread."""
    from compound.executor.service import Executor

    settings = Settings(
        database_url=f"sqlite:///{db}",
        max_subtasks=max(20, len(latencies_ms)),
        max_concurrency=max(16, len(latencies_ms)),
        planner_model=MODEL,
        tier1_models=[MODEL],
        tier2_models=[MODEL],
        tier3_models=[MODEL],
        default_budget_usd=1000.0,
    )
    client = SleepLLM()
    async with open_store(settings.database_url) as store:
        if loop_writer:
            await store.write_from_here()
        executor = Executor(settings=settings, store=store, client=client, price_of=lambda _m: PRICE)
        # A server's executor is long-lived: warm its connections and caches first.
        warm = await store.create_task(prompt="warm", budget_usd=1.0, plan_in=make_plan([0], [[]]))
        await executor.run_task(warm.id)
        client.calls = 0
        task = await store.create_task(prompt="bench", budget_usd=1000.0, plan_in=make_plan(latencies_ms, deps))
        t0, c0 = time.perf_counter(), time.process_time()
        await executor.run_task(task.id)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        status = (await store.head(task.id)).status
        await executor.stop()
    if status != TaskStatus.completed:
        raise SystemExit(f"benchmark task ended {status}")
    return elapsed, client.calls, cpu


async def run_waves(latencies_ms: list[int], deps: list[list[int]]) -> float:
    """The wave-barrier baseline: all of a wave at once, the next wave after the last."""
    plan = PlanIn.model_validate(make_plan(latencies_ms, deps))
    client = SleepLLM()
    t0 = time.perf_counter()
    for wave in waves(plan.deps()):
        await asyncio.gather(
            *(
                client.complete(
                    model=MODEL,
                    messages=[
                        {"role": "system", "content": "You are compound's worker."},
                        {"role": "user", "content": plan.subtasks[i].description},
                    ],
                    max_tokens=16,
                )
                for i in wave
            )
        )
    return time.perf_counter() - t0


class State(TypedDict):
    """LangGraph's state for the comparison: the finished node ids."""

    done: Annotated[list[int], operator.add]


def langgraph_version() -> str | None:
    try:
        import importlib.metadata

        import langgraph  # noqa: F401

        return importlib.metadata.version("langgraph")
    except ImportError:
        return None


async def run_langgraph(latencies_ms: list[int], deps: list[list[int]]) -> float:
    """The same DAG as a LangGraph StateGraph: a node per subtask, a join edge from its
    dependencies, the same sleeps. Nothing persisted (no checkpointer)."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(State)
    has_children = {d for ds in deps for d in ds}

    def node(i: int, ms: int) -> Any:
        async def run(_state: State) -> dict[str, list[int]]:
            if ms:
                await asyncio.sleep(ms / 1000)
            return {"done": [i]}
        return run

    for i, ms in enumerate(latencies_ms):
        graph.add_node(f"n{i}", node(i, ms))
    for i, ds in enumerate(deps):
        if not ds:
            graph.add_edge(START, f"n{i}")
        elif len(ds) == 1:
            graph.add_edge(f"n{ds[0]}", f"n{i}")
        else:
            graph.add_edge([f"n{d}" for d in ds], f"n{i}")
        if i not in has_children:
            graph.add_edge(f"n{i}", END)
    app = graph.compile()
    t0 = time.perf_counter()
    out = await app.ainvoke({"done": []}, {"recursion_limit": 10 * len(deps) + 10})
    elapsed = time.perf_counter() - t0
    assert sorted(out["done"]) == list(range(len(deps)))
    return elapsed


async def main_async(write: Path | None, repeats: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="compound-bench-"))
    lines: list[str] = []
    load = os.getloadavg()[0]  # this machine is shared: say how busy it was

    lg = langgraph_version()
    lines.append("### Makespan against the critical path (simulated latencies)\n")
    lines.append("| DAG | subtasks | critical path (s) | compound (s) | compound / CP | wave barrier / CP | "
                 + (f"LangGraph {lg} / CP |" if lg else "LangGraph |"))
    lines.append("|---|---|---|---|---|---|---|")
    for name, (lat, deps) in (("skewed", skewed_dag()), ("fan-out 50", fanout_dag())):
        cp = critical_path_s(lat, deps)
        eager, wave, graph = [], [], []
        for r in range(repeats):
            eager.append((await run_eager(lat, deps, tmp / f"{name}-{r}.db"))[0])
            wave.append(await run_waves(lat, deps))
            if lg:
                graph.append(await run_langgraph(lat, deps))
        e, w = statistics.median(eager), statistics.median(wave)
        g = f"{statistics.median(graph) / cp:.3f}" if graph else "not installed"
        lines.append(f"| {name} | {len(lat)} | {cp:.3f} | {e:.3f} | {e / cp:.3f} | {w / cp:.3f} | {g} |")
        print(lines[-1], flush=True)

    lines.append("\n### Orchestration overhead per subtask (zero-latency model, SQLite file, every transition committed)\n")
    lines.append("| subtasks | model calls | executor process: ms per subtask | CPU ms per subtask | "
                 "writer thread: ms per subtask | CPU ms per subtask | LangGraph ms per node (in memory) |")
    lines.append("|---|---|---|---|---|---|---|")
    for n in (10, 100, 1000):
        lat, deps = layered_dag(n)
        got: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
        graph = []
        calls = 0
        for r in range(repeats):
            for loop_writer in ((True, False) if r % 2 == 0 else (False, True)):  # alternately first
                elapsed, calls, cpu = await run_eager(lat, deps, tmp / f"overhead-{n}-{r}-{loop_writer}.db",
                                                      loop_writer=loop_writer)
                got[loop_writer][0].append(elapsed)
                got[loop_writer][1].append(cpu)
            if lg:
                graph.append(await run_langgraph(lat, deps))
        g = f"{statistics.median(graph) / n * 1000:.3f}" if graph else "not installed"
        cells = " | ".join(f"{statistics.median(walls) / n * 1000:.3f} | {statistics.median(cpus) / n * 1000:.3f}"
                           for walls, cpus in (got[True], got[False]))
        lines.append(f"| {n} | {calls} | {cells} | {g} |")
        print(lines[-1], flush=True)

    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load:.1f} at the start, median of {repeats} runs, with:\n\n    .venv/bin/python bench/dag_bench.py --repeats {repeats} --write docs/benchmarks.md\n"
    )
    report = header + "\n" + "\n".join(lines) + "\n"
    print(report)
    if write is not None:
        write_section(write, "dag_bench", "Executor: makespan and overhead", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main_async(args.write, args.repeats))


if __name__ == "__main__":
    main()
