"""Benchmark of a tool call: compound's path against a bare MCP client making the same
call on the same server, side by side in one run.

    .venv/bin/python bench/tool_bench.py [--calls 300] [--rounds 3] [--write docs/benchmarks.md]

The demo MCP server (`compound tools demo-server`) runs in another process (its CPU is
not counted); this process makes `lookup(topic="openai")` calls one after the other,
each on one long-lived session:
  bare MCP client   mcp.client.Client.call_tool over streamable HTTP (httpx2), nothing else
  compound servers  ToolServers.call: the call handed to the session's owning task
                    through its queue, the result back through a future
  compound step     a direct call (kind "tool") as the executor makes it:
                    ToolSteps.run_direct (the idempotency key, the intent row and its
                    event, the call with the key in `_meta`, then the outcome row and
                    the subtask's completion, with their events, in one transaction),
                    on a SQLite file (WAL), written from this loop as the executor's own
                    process writes (the default: `compound serve` runs it in a child
                    process); a call of a subtask's tool loop writes the same two
                    transactions (intent, outcome)
  ..., writer thread  the same with every write handed to the store's writer thread
                    and back, as when the executor runs on the server's loop
                    (COMPOUND_EXECUTOR_PROCESS=false)
Wall per call (median, p95) is timed around each call; CPU per call is this process's
CPU time over the N calls / N. Variants run interleaved, `--rounds` times each, and each
figure is the median over rounds. Goal: compound adds at most 30% wall time and at most
1 ms of CPU per call to the bare client's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import machine, write_section
from compound.core.settings import Settings
from compound.executor.steps import ToolSteps
from compound.store import open_store, store_options
from compound.store.base import RunStore
from compound.store.models import SubtaskStatus, TaskStatus, ToolCallStatus
from compound.store.values import SubState, TaskState, ToolCallRecord
from compound.tools.config import McpServerConfig
from compound.tools.demo import FACTS
from compound.tools.servers import ToolServers, content_text

ROOT = Path(__file__).resolve().parents[1]
ARGUMENTS = {"topic": "openai"}
FACT = FACTS["openai"]
GOAL_WALL, GOAL_CPU_MS = 1.30, 1.0
WARM = 20  # calls before the measured ones

Call = Callable[[int], Awaitable[str]]


@dataclass
class Measured:
    wall_median_ms: float
    wall_p95_ms: float
    cpu_ms: float


def start_demo_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "compound.cli", "tools", "demo-server", "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # printed once it listens
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the demo MCP server did not start: {url!r}")
    return proc, url


async def measure(call: Call, calls: int) -> Measured:
    walls: list[float] = []
    cpu0 = time.process_time()
    for i in range(calls):
        t0 = time.perf_counter()
        await call(i)
        walls.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    walls.sort()
    return Measured(statistics.median(walls) * 1000, walls[int(0.95 * (len(walls) - 1))] * 1000,
                    cpu / calls * 1000)


@asynccontextmanager
async def bare_client(url: str) -> AsyncIterator[Call]:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(timeout=httpx2.Timeout(10, read=None)) as http, \
            Client(streamable_http_client(url, http_client=http), cache=None) as client:
        async def call(_i: int) -> str:
            return content_text(await client.call_tool("lookup", ARGUMENTS))

        yield call


@asynccontextmanager
async def compound_servers(url: str) -> AsyncIterator[Call]:
    servers = ToolServers({"demo": McpServerConfig(url=url, trusted=True)})
    await servers.start()
    try:
        async def call(_i: int) -> str:
            return (await servers.call("demo", "lookup", ARGUMENTS)).text

        yield call
    finally:
        await servers.stop()


@asynccontextmanager
async def planned_task(calls: int, db: Path, *, loop_writer: bool = True) -> AsyncIterator[tuple[RunStore, TaskState]]:
    """A task on a SQLite file (WAL) whose plan is `calls` direct calls, and the warm-up's;
    written from this loop as the executor's own process writes (`loop_writer`), or
    handed to the store's writer thread as the API's process does."""
    settings = Settings(database_url=f"sqlite:///{db}", max_subtasks=calls + WARM)
    subs = [SubState(index=i, description=f"look up {i}", tier_hint=1, tier_assigned=1, models=["none"],
                     depends_on=[], status=SubtaskStatus.pending, kind="tool", tool="demo.lookup",
                     arguments=ARGUMENTS) for i in range(calls + WARM)]
    async with open_store(settings.database_url, **store_options(settings)) as store:
        st = await store.create_task(prompt="bench", budget_usd=1.0)
        await store.save_plan(st.id, reasoning=None, subtasks=subs, prompt_versions={}, status=TaskStatus.planned)
        if loop_writer:
            await store.write_from_here()
        yield store, replace(st, subtasks=subs)  # as the executor holds it: a fresh task's first run


@asynccontextmanager
async def compound_step(url: str, calls: int, db: Path, *, loop_writer: bool = True) -> AsyncIterator[Call]:
    """Each call a direct subtask run as the executor runs one, in turn."""
    servers = ToolServers({"demo": McpServerConfig(url=url, trusted=True)})
    await servers.start()
    try:
        async with planned_task(calls, db, loop_writer=loop_writer) as (store, st):
            steps = ToolSteps(settings=Settings(database_url=store.url), store=store,
                              calls=None,  # type: ignore[arg-type]  # a direct call makes no model call
                              tools=lambda: servers)
            turn = itertools.count()

            async def call(_i: int) -> str:
                i = next(turn)
                done = await steps.run_direct(st, st.subtasks[i])
                return done.result or ""

            yield call
    finally:
        await servers.stop()


@asynccontextmanager
async def records_only(calls: int, db: Path, *, loop_writer: bool = True) -> AsyncIterator[Call]:
    """What the step writes, without the call: the intent, then the outcome with the
    subtask's completion."""
    async with planned_task(calls, db, loop_writer=loop_writer) as (store, st):
        turn = itertools.count()

        async def call(_i: int) -> str:
            i = next(turn)
            key = f"tc_{i}"
            await store.tool_call_started(st.id, ToolCallRecord(
                id=key, subtask=i, turn=0, model_call_id=None, tool="demo.lookup", arguments=ARGUMENTS,
                status=ToolCallStatus.running))
            await store.tool_call_completed(st.id, key, result=FACT)
            return FACT

        yield call


async def one_round(url: str, calls: int, tmp: Path, k: int) -> dict[str, Measured]:
    out: dict[str, Measured] = {}
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("bare MCP client", lambda: bare_client(url)),
        ("compound servers", lambda: compound_servers(url)),
        ("compound step", lambda: compound_step(url, calls, tmp / f"step-{k}.db")),
        ("(its records alone, no call)", lambda: records_only(calls, tmp / f"records-{k}.db")),
        ("compound step, writer thread", lambda: compound_step(url, calls, tmp / f"stept-{k}.db", loop_writer=False)),
        ("(records alone, writer thread)", lambda: records_only(calls, tmp / f"recordst-{k}.db", loop_writer=False)),
    ]
    if k % 2:  # interleave: alternate which variant runs first
        variants.reverse()
    for name, make in variants:
        async with make() as call:
            for i in range(WARM):  # warm the session, the pools and the caches
                await call(i)
            out[name] = await measure(call, calls)
    return out


def median_of(rounds: list[dict[str, Measured]], name: str) -> Measured:
    return Measured(*(statistics.median(getattr(r[name], f) for r in rounds)
                      for f in ("wall_median_ms", "wall_p95_ms", "cpu_ms")))


def table(rounds: list[dict[str, Measured]]) -> str:
    """Each variant's medians, and its comparison with the bare client paired by round
    (the median of the rounds' ratios and differences: a slower or faster stretch of the
    machine moves both sides of a pair alike)."""
    bare = "bare MCP client"
    rows = ["| variant | wall ms per call (median) | wall ms (p95) | CPU ms per call | wall / bare | "
            "CPU ms added | goal met |", "|---|---|---|---|---|---|---|"]
    for name in rounds[0]:
        m = median_of(rounds, name)
        ratio = statistics.median(r[name].wall_median_ms / r[bare].wall_median_ms for r in rounds)
        added = statistics.median(r[name].cpu_ms - r[bare].cpu_ms for r in rounds)
        compared = f"{ratio:.2f} | {added:+.3f}"
        if name.startswith("("):  # a part of a variant, not a way to make the call
            compared, met = "— | —", "—"
        else:
            met = "—" if name == bare else ("yes" if ratio <= GOAL_WALL and added <= GOAL_CPU_MS else "no")
        rows.append(f"| {name} | {m.wall_median_ms:.3f} | {m.wall_p95_ms:.3f} | {m.cpu_ms:.3f} | {compared} | "
                    f"{met} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    proc, url = start_demo_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rounds = [asyncio.run(one_round(url, args.calls, Path(tmp), k)) for k in range(args.rounds)]
    finally:
        proc.kill()
        proc.wait()
    text = table(rounds)
    print(text)
    if args.write:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = " ".join(["bench/tool_bench.py", f"--calls {args.calls}", f"--rounds {args.rounds}",
                            f"--write {args.write}"])
        body = (f"Measured {when} on {machine()}, load average {load:.1f} at the start: {args.calls} calls "
                f"one after the other per variant, variants interleaved, median of {args.rounds} rounds (the "
                f"comparisons: of each round's own), the demo MCP server in another process, with:\n\n    .venv/bin/python {command}\n\n{text}\n")
        write_section(args.write, "tool_bench", "Tool calls: compound against a bare MCP client", body)


if __name__ == "__main__":
    main()
