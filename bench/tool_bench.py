"""Benchmark of a tool call: compound's path against a bare MCP client making the same
call on the same server, side by side in one run.

    .venv/bin/python bench/tool_bench.py [--calls 3000] [--block 10] [--write docs/benchmarks.md]

The demo MCP server (`compound tools demo-server`) runs in another process (its CPU is
not counted); this process makes `lookup(topic="openai")` calls one after the other,
each variant on its own long-lived session:
  bare MCP client   mcp.client.Client.call_tool over streamable HTTP (httpx2), nothing else
  compound servers  ToolServers.call: the call handed to the session's owning task
                    through its queue, the result back through a future
  compound loop call  one call of a subtask's tool loop as the executor makes it
                    (`_Calls.run`, run for each call the model asks for): the
                    idempotency key, the intent row and its event committed before the
                    send, the call with the key in `_meta`, the outcome row and its event
                    (pipelined: a block waits for its last one); the model's turns
                    around it are not part of the call
  compound step     a direct call (kind "tool") as the executor makes it:
                    ToolSteps.run_direct: the call's records as above, its subtask's
                    start with the intent and its completion with the outcome (awaited)
  (records ...)     the direct call's two writes alone, no call
  ..., writer thread  every write handed to the store's writer thread and back, as when
                    the executor runs on the server's loop (COMPOUND_EXECUTOR_PROCESS=false)
The stores are SQLite files (WAL), written from this loop as the executor's own process
writes them (the default: `compound serve` runs the executor in a child process).
Every variant is open at once; the calls run in blocks of `--block`, one block of each
variant per round, the order rotating, so a faster or slower stretch of the machine
falls on every variant alike. Wall and CPU (this process's, every thread's) per call are
taken per block; each figure is the median over blocks, each comparison the median over
rounds of a block against the bare client's block of the same round. Goal: a call
through compound's loop adds at most 30% wall time and at most 1 ms of CPU per call.
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
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import machine, write_section
from compound.core.settings import Settings
from compound.executor.calls import ModelCalls
from compound.executor.steps import ToolSteps, _Calls
from compound.llm.pricing import price_of
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


async def _nothing() -> None:
    return None


@dataclass
class Variant:
    call: Call
    settle: Callable[[], Awaitable[None]] = _nothing  # what a block waits for after its calls


@dataclass
class Samples:
    walls: list[float] = field(default_factory=list)  # each call's, s
    blocks: list[tuple[float, float]] = field(default_factory=list)  # each block's (wall, CPU) per call, ms


def start_demo_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "compound.cli", "tools", "demo-server", "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # printed once it listens
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the demo MCP server did not start: {url!r}")
    return proc, url


async def block(v: Variant, calls: int, into: Samples) -> None:
    """`calls` calls one after the other, then what they leave to settle; their wall
    and CPU per call (this process's, every thread's)."""
    cpu0, w0 = time.process_time(), time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        await v.call(i)
        into.walls.append(time.perf_counter() - t0)
    await v.settle()
    into.blocks.append(((time.perf_counter() - w0) / calls * 1000, (time.process_time() - cpu0) / calls * 1000))


@asynccontextmanager
async def bare_client(url: str) -> AsyncIterator[Variant]:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(timeout=httpx2.Timeout(10, read=None)) as http, \
            Client(streamable_http_client(url, http_client=http), cache=None) as client:
        async def call(_i: int) -> str:
            return content_text(await client.call_tool("lookup", ARGUMENTS))

        yield Variant(call)


@asynccontextmanager
async def compound_servers(url: str) -> AsyncIterator[Variant]:
    servers = ToolServers({"demo": McpServerConfig(url=url, trusted=True)})
    await servers.start()
    try:
        async def call(_i: int) -> str:
            return (await servers.call("demo", "lookup", ARGUMENTS)).text

        yield Variant(call)
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
async def compound_step(url: str, calls: int, db: Path, *, loop_writer: bool = True) -> AsyncIterator[Variant]:
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

            yield Variant(call)
    finally:
        await servers.stop()


@asynccontextmanager
async def loop_call(url: str, db: Path) -> AsyncIterator[Variant]:
    """Each call one more call of a running subtask's tool loop, as the loop makes it
    for a tool call the model asked for (turn k, the provider's call id)."""
    servers = ToolServers({"demo": McpServerConfig(url=url, trusted=True)})
    await servers.start()
    try:
        async with planned_task(1, db) as (store, st):
            settings = Settings(database_url=store.url)
            calls = ModelCalls(settings=settings, store=store,
                               client=None,  # type: ignore[arg-type]  # the model's turns are not measured
                               price_of=lambda m: price_of(m, settings), observers=(), sleep=asyncio.sleep)
            steps = ToolSteps(settings=settings, store=store, calls=calls, tools=lambda: servers)
            sub = replace(st.subtasks[0], kind="llm", tool=None, arguments=None, tools=["demo.lookup"],
                          status=SubtaskStatus.running)
            made = _Calls(steps, st, sub, {})
            turn = itertools.count()

            async def call(_i: int) -> str:
                k = next(turn)
                text, is_error = await made.run(turn=k, model_call_id=f"toolu_{k}", name="demo.lookup",
                                                arguments=ARGUMENTS)
                assert not is_error, text
                return text

            yield Variant(call, lambda: calls.drain(st.id))  # the block's last outcome is pipelined
    finally:
        await servers.stop()


@asynccontextmanager
async def records_only(calls: int, db: Path, *, loop_writer: bool = True) -> AsyncIterator[Variant]:
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

        yield Variant(call)


async def run_all(url: str, calls: int, size: int, tmp: Path) -> dict[str, Samples]:
    """Every variant open at once and warmed, then measured in rounds of one block each."""
    makers: list[tuple[str, Callable[[], Any]]] = [
        ("bare MCP client", lambda: bare_client(url)),
        ("compound servers", lambda: compound_servers(url)),
        ("compound loop call", lambda: loop_call(url, tmp / "loop.db")),
        ("compound step", lambda: compound_step(url, calls, tmp / "step.db")),
        ("(its records alone, no call)", lambda: records_only(calls, tmp / "records.db")),
        ("compound step, writer thread", lambda: compound_step(url, calls, tmp / "stept.db", loop_writer=False)),
        ("(records alone, writer thread)", lambda: records_only(calls, tmp / "recordst.db", loop_writer=False)),
    ]
    out = {name: Samples() for name, _ in makers}
    async with AsyncExitStack() as stack:
        variants = [(name, await stack.enter_async_context(make())) for name, make in makers]
        for _name, v in variants:  # warm the sessions, the pools and the caches
            await block(v, WARM, Samples())
        for k in range(calls // size):
            turn = k % len(variants)
            for name, v in variants[turn:] + variants[:turn]:
                await block(v, size, out[name])
    return out


def table(samples: dict[str, Samples]) -> str:
    """Each variant's medians, and its comparison with the bare client paired by round."""
    bare = samples["bare MCP client"].blocks
    rows = ["| variant | wall ms per call (median) | wall ms (p95) | CPU ms per call | wall / bare | "
            "CPU ms added | goal met |", "|---|---|---|---|---|---|---|"]
    for name, got in samples.items():
        walls = sorted(got.walls)
        wall = statistics.median(w for w, _ in got.blocks)
        cpu = statistics.median(c for _, c in got.blocks)
        ratio = statistics.median(w / b[0] for (w, _), b in zip(got.blocks, bare, strict=True))
        added = statistics.median(c - b[1] for (_, c), b in zip(got.blocks, bare, strict=True))
        compared = f"{ratio:.2f} | {added:+.3f}"
        if name.startswith("("):  # a part of a variant, not a way to make the call
            compared, met = "— | —", "—"
        elif name == "compound loop call":  # the goal's
            met = "yes" if ratio <= GOAL_WALL and added <= GOAL_CPU_MS else "no"
        else:
            met = "—"
        rows.append(f"| {name} | {wall:.3f} | {walls[int(0.95 * (len(walls) - 1))] * 1000:.3f} | {cpu:.3f} | "
                    f"{compared} | {met} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000, help="calls per variant")
    parser.add_argument("--block", type=int, default=10, help="calls per block; one block of each variant a round")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    proc, url = start_demo_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            samples = asyncio.run(run_all(url, args.calls, args.block, Path(tmp)))
    finally:
        proc.kill()
        proc.wait()
    text = table(samples)
    print(text)
    if args.write:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = f"bench/tool_bench.py --calls {args.calls} --block {args.block} --write {args.write}"
        body = (f"Measured {when} on {machine()}, load average {load:.1f} at the start: {args.calls} calls per "
                f"variant in blocks of {args.block}, one block of each variant per round (the order rotating), "
                f"every variant open at once, the demo MCP server in another process, with:\n\n"
                f"    .venv/bin/python {command}\n\n{text}\n")
        write_section(args.write, "tool_bench", "Tool calls: compound against a bare MCP client", body)


if __name__ == "__main__":
    main()
