"""Benchmark of prompt caching: the input cost of a 10-subtask task whose
request is 3,000 tokens, with and without the cache marker, on the simulator's
Anthropic cache accounting (a prefix is read from cache once the call writing it has
begun to answer, within the TTL; writes at 1.25x the input price, reads at 0.1x).

    .venv/bin/python bench/cache_bench.py [--write docs/benchmarks.md]

The real Executor runs the task against the simulator over HTTP (50 ms per call) with
compound's Anthropic adapter; "without" strips the cache marker from every message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compound.core.settings import ModelConfig, Settings
from compound.llm import LLMClient, build_client
from compound.llm.base import Completion, Message, StreamEvent, ToolChoice, ToolSpec
from compound.llm.pricing import price_of
from compound.simulator import Script, SimulatorThread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.client_bench import replace_section

MODEL = "anthropic/claude-sonnet-4-5"  # its minimum cacheable prompt is 1,024 tokens
MARKER = "<!-- cache_bench -->"
REQUEST_TOKENS = 3000


class NoCache:
    """The same client with every cache marker removed (the prompt is unchanged)."""

    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner

    @staticmethod
    def _strip(messages: list[Message]) -> list[Message]:
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    async def warm(self) -> None:
        await self.inner.warm()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None = None, timeout_s: float | None = None,
                       tools: Sequence[ToolSpec] | None = None, tool_choice: ToolChoice = "auto") -> Completion:
        return await self.inner.complete(model=model, messages=self._strip(messages), max_tokens=max_tokens,
                                         json_schema=json_schema, timeout_s=timeout_s,
                                         tools=tools, tool_choice=tool_choice)

    def stream(self, *, model: str, messages: list[Message], max_tokens: int,
               json_schema: dict[str, Any] | None = None, timeout_s: float | None = None,
               tools: Sequence[ToolSpec] | None = None,
               tool_choice: ToolChoice = "auto") -> AsyncIterator[StreamEvent]:
        return self.inner.stream(model=model, messages=self._strip(messages), max_tokens=max_tokens,
                                 json_schema=json_schema, timeout_s=timeout_s,
                                 tools=tools, tool_choice=tool_choice)


def request_text(tokens: int) -> str:
    """About `tokens` tokens by the simulator's count (4 bytes a token)."""
    sentence = "Compare the vendors' contracts on price, support hours, uptime credits and exit terms. "
    return (sentence * (tokens * 4 // len(sentence) + 1))[: tokens * 4]


def plan(deps: list[list[int]]) -> dict[str, Any]:
    return {"reasoning": "benchmark", "subtasks": [
        {"description": f"look at aspect {i} of the contracts", "tier_hint": 2, "depends_on": d}
        for i, d in enumerate(deps)]}


async def run_task(url: str, db: Path, deps: list[list[int]], cached: bool) -> dict[str, float]:
    from compound.executor.service import Executor
    from compound.store import open_store

    settings = Settings(database_url=f"sqlite:///{db}", planner_model=MODEL, tier1_models=[MODEL],
                        tier2_models=[MODEL], tier3_models=[MODEL], max_concurrency=32,
                        models={MODEL: ModelConfig(api_base=url)}, max_prompt_chars=100_000)
    client = build_client(settings)
    async with open_store(settings.database_url) as store:
        executor = Executor(settings=settings, store=store, client=client if cached else NoCache(client))
        task = await store.create_task(prompt=request_text(REQUEST_TOKENS), budget_usd=100.0, plan_in=plan(deps))
        t0 = time.perf_counter()
        await executor.run_task(task.id)
        wall = time.perf_counter() - t0
        await executor.stop()
        rows = [SimpleNamespace(**r) for r in await store.ledger_rows(task.id)]
    p = price_of(MODEL, settings)
    subs = [r for r in rows if r.kind == "subtask"]
    assert len(subs) == len(deps) and all(r.status == "ok" for r in rows), [(r.kind, r.status) for r in rows]
    return {
        "input_usd": sum(r.input_tokens * p.input + r.cache_read_tokens * p.cache_read
                         + r.cache_write_tokens * p.cache_write for r in subs),
        "written": sum(r.cache_write_tokens for r in subs),
        "read": sum(r.cache_read_tokens for r in subs),
        "task_usd": sum(r.cost_usd for r in rows),
        "wall": wall,
    }


async def main_async(write: Path | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="compound-cache-bench-"))
    shapes: dict[str, list[list[int]]] = {
        "10 independent subtasks (one wave)": [[] for _ in range(10)],
        "9 independent + 1 joining": [[] for _ in range(9)] + [list(range(9))],
        "a chain of 10": [[]] + [[i] for i in range(9)],
    }
    lines = ["| plan | subtask input cost without caching ($) | with caching ($) | with / without | "
             "cache tokens written / read | whole task without / with ($) | wall without / with (s) |",
             "|---|---|---|---|---|---|---|"]
    server = SimulatorThread(Script(latency_s=0.05)).start()
    try:  # warm: imports, the price map, connections
        await run_task(server.url, tmp / "warm.db", [[]], cached=False)
    finally:
        server.stop()
    for name, deps in shapes.items():
        server = SimulatorThread(Script(latency_s=0.05)).start()
        try:
            off = await run_task(server.url, tmp / f"{len(lines)}-off.db", deps, cached=False)
            server.sim.reset()
            server.sim.script.latency_s = 0.05
            on = await run_task(server.url, tmp / f"{len(lines)}-on.db", deps, cached=True)
        finally:
            server.stop()
        lines.append(f"| {name} | {off['input_usd']:.5f} | {on['input_usd']:.5f} | "
                     f"{on['input_usd'] / off['input_usd']:.2f} | {on['written']:.0f} / {on['read']:.0f} | "
                     f"{off['task_usd']:.5f} / {on['task_usd']:.5f} | {off['wall']:.2f} / {on['wall']:.2f} |")
        print(lines[-1], flush=True)
    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"Python {platform.python_version()}: one task per row on {MODEL} (litellm's prices), its request "
        f"{REQUEST_TOKENS:,} tokens, 50 ms per call, with:\n\n"
        "    .venv/bin/python bench/cache_bench.py --write docs/benchmarks.md\n"
    )
    report = header + "\n" + "\n".join(lines) + "\n"
    print(report)
    if write is not None:
        replace_section(write, MARKER, "## Prompt caching: input cost of a 10-subtask task", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file")
    args = parser.parse_args()
    asyncio.run(main_async(args.write))


if __name__ == "__main__":
    main()
