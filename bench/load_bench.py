"""Many tasks through one `compound serve` against the provider simulator:
every task completes with no HTTP error while each is polled about once a second,
GET /healthz stays fast, peak memory stays bounded, and model calls/s is set beside
the provider SDK's floor (AsyncAnthropic making as many calls at the same
concurrency against the same simulator, in the same run, right after compound's; in
rounds, --rounds of them, so a drift of the machine's speed falls on both alike).

    .venv/bin/python bench/load_bench.py [--write docs/benchmarks.md]

Targets: 300 tasks x 10 subtasks at 50 ms latency: all complete, no HTTP error,
/healthz p99 <= 20 ms; 1,000 tasks x 10 subtasks: peak RSS of the server <= 500 MB.
/healthz is probed every --probe-ms (20 ms: some 300 probes a round, so a p99 is not
just the round's few worst probes) from another process (its own connection), so the
bench's own client load does not delay the probe; an idle bare FastAPI app's /healthz
is probed the same way at the same time, to show what the machine alone adds.
Each size runs with the executor in its own process (`compound serve`'s default) and
then on the server's own event loop (COMPOUND_EXECUTOR_PROCESS=false, what tests and an
in-memory store use), side by side (--executor picks one). CPU and peak RSS count the server's process and its child.
LOAD_BENCH_DUMP=<file> writes every probe's latency there (JSON), to see when the slow ones came.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import (
    BIN,
    MachineCpu,
    base_env,
    compound_server,
    create_token,
    free_port,
    machine,
    running,
    simulator,
    write_section,
)

TERMINAL = {"completed", "partial", "failed", "canceled"}
PROBE_MS = 20.0  # /healthz probes' default period
PARTS = ["the history of {i}", "the costs of {i}", "the risks of {i}", "the people behind {i}",
         "the tools for {i}", "the rules about {i}", "the data on {i}", "the future of {i}",
         "the critics of {i}", "the alternatives to {i}", "the numbers of {i}"]


def prompt(i: int, subtasks: int) -> str:
    """A request the simulator's planner splits into subtasks - 1 parts and a join."""
    return "Look into " + " and ".join(p.format(i=f"topic {i}") for p in PARTS[: subtasks - 1])


def probe(url: str, stop: MpEvent, out: Connection, every_s: float) -> None:
    """GET /healthz every `every_s` on one keep-alive connection; send back each
    latency in ms (inf for a failure)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    seen: list[float] = []
    while not stop.is_set():
        start = time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            seen.append((time.perf_counter() - start) * 1000 if resp.status == 200 else float("inf"))
        except (OSError, http.client.HTTPException):
            seen.append(float("inf"))
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        time.sleep(max(0.0, every_s - (time.perf_counter() - start)))
    out.send(seen)


@dataclass
class Floor:
    """The bare SDK making the same number of calls at the same concurrency."""

    calls_per_s: float
    cpu_s: float  # the SDK client's process
    sim_cpu_s: float  # the simulator meanwhile


@dataclass
class Round:
    """One round: compound's run, then the bare SDK's floors, one right after the other."""

    wall_s: float
    calls: int
    floors: dict[str, Floor] = field(default_factory=dict)  # by the SDK's HTTP stack

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s if self.wall_s else 0.0

    def ratio(self, http: str) -> float:
        floor = self.floors.get(http)
        return self.calls_per_s / floor.calls_per_s if floor and floor.calls_per_s else float("nan")


@dataclass
class LoadResult:
    tasks: int
    subtasks: int
    rounds: list[Round]
    statuses: dict[str, int]  # over every round
    http_errors: list[str]
    polls: int
    health_ms: list[float]  # every round's probes
    peak_rss_mb: float
    idle_health_ms: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0  # the server's CPU over compound's runs (start-up excluded)
    sim_cpu_s: float = 0.0  # the simulator's CPU while compound ran
    executor: str = "process"  # where the server ran its executor: its own process, or its own loop
    cpu: MachineCpu = field(default_factory=MachineCpu)  # the machine, over compound's runs

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.rounds)

    def cpu_ms_per_call(self, cpu_s: float, calls: int | None = None) -> float:
        calls = self.calls if calls is None else calls
        return cpu_s * 1000 / calls if calls else float("nan")

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    @property
    def wall_s(self) -> float:
        return self.median([r.wall_s for r in self.rounds])

    @property
    def calls_per_s(self) -> float:
        return self.median([r.calls_per_s for r in self.rounds])

    def floor_per_s(self, http: str) -> float:
        return self.median([r.floors[http].calls_per_s for r in self.rounds if http in r.floors])

    def floor_cpu_ms(self, http: str) -> float:
        floors = [r.floors[http] for r in self.rounds if http in r.floors]
        return self.cpu_ms_per_call(sum(f.cpu_s for f in floors), sum(r.calls for r in self.rounds))

    def ratios(self, http: str) -> list[float]:
        return [r.ratio(http) for r in self.rounds if http in r.floors]

    def health(self, q: float, *, idle: bool = False) -> float:
        seen = self.idle_health_ms if idle else self.health_ms
        if not seen:
            return float("nan")
        ordered = sorted(seen)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(url: str, token: str, *, tasks: int, subtasks: int, poll_s: float,
                timeout_s: float, first: int = 0) -> tuple[float, dict[str, int], list[str], int]:
    """Submit every task, then poll each about every `poll_s` until it ends. The wall
    time runs from the first submission to the last task's end as the server recorded
    it (its `completed_at`; the poll that sees it comes up to `poll_s` later). The client
    is aiohttp's: httpx's pool costs this process ~5 ms of CPU a request at 64
    connections, and the client shares the machine's two cores with the server."""
    import aiohttp

    auth = {"Authorization": f"Bearer {token}"}
    errors: list[str] = []
    statuses: dict[str, int] = {}
    polls = 0
    ended: list[float] = []  # each task's completed_at (epoch seconds)
    # Idle connections are dropped before uvicorn's 5 s keep-alive closes them: with equal
    # timeouts a request can go out on a connection the server is closing.
    connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=2.0)
    async with aiohttp.ClientSession(base_url=url, headers=auth, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        start, start_epoch = time.monotonic(), time.time()
        gate = asyncio.Semaphore(32)

        async def call(method: str, path: str, **kw: Any) -> tuple[int, Any] | None:
            """(status, JSON body), or None after recording a transport error."""
            try:
                async with http.request(method, path, **kw) as r:
                    body = await r.read()
                    return r.status, json.loads(body) if r.status < 300 else body.decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors.append(f"{method} {path}: {type(exc).__name__} {exc}"[:200])
                return None

        async def submit(i: int) -> str | None:
            async with gate:
                r = await call("POST", "/v1/tasks", json={"prompt": prompt(i, subtasks), "budget_usd": 5.0})
            if r is None:
                return None
            if r[0] != 202:
                errors.append(f"POST {r[0]}: {str(r[1])[:200]}")
                return None
            return str(r[1]["id"])

        async def follow(task_id: str) -> None:
            nonlocal polls
            await asyncio.sleep(random.random() * poll_s)  # spread the polls over the second
            while time.monotonic() - start < timeout_s:
                r = await call("GET", f"/v1/tasks/{task_id}")
                polls += 1
                if r is None:
                    await asyncio.sleep(poll_s)
                    continue
                if r[0] != 200:
                    errors.append(f"GET {r[0]}: {str(r[1])[:200]}")
                    return
                status = r[1]["status"]
                if status in TERMINAL:
                    statuses[status] = statuses.get(status, 0) + 1
                    if r[1].get("completed_at"):
                        ended.append(datetime.fromisoformat(r[1]["completed_at"].replace("Z", "+00:00")).timestamp())
                    return
                await asyncio.sleep(poll_s)
            statuses["unfinished"] = statuses.get("unfinished", 0) + 1

        ids = await asyncio.gather(*(submit(i) for i in range(first, first + tasks)))
        await asyncio.gather(*(follow(t) for t in ids if t is not None))
        wall = max(ended) - start_epoch if len(ended) == tasks else time.monotonic() - start
    return wall, statuses, errors, polls


def model_calls(url: str) -> int:
    """Model calls the server made, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("compound_model_calls_total{")))


async def sdk_floor(sim_url: str, *, calls: int, concurrency: int, http: str) -> tuple[float, float]:
    """Calls/s of AsyncAnthropic making `calls` worker calls, `concurrency` at a time, on
    the SDK's default HTTP client (`httpx`) or its `aiohttp` one (compound's default), and
    the CPU seconds this process spent on them."""
    import anthropic

    http_client = anthropic.DefaultAioHttpClient() if http == "aiohttp" else None  # None: the SDK's httpx
    client = anthropic.AsyncAnthropic(base_url=sim_url, api_key="sim", max_retries=0, http_client=http_client)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=256, system="You are compound's worker.",
                messages=[{"role": "user", "content": f"<subtask>step {i}</subtask>"}])

    start, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(calls)))
    wall, cpu = time.monotonic() - start, time.process_time() - cpu
    await client.close()
    return calls / wall, cpu


def run(*, tasks: int, subtasks: int, latency_ms: int, concurrency: int, poll_s: float,
        timeout_s: float, executor: str = "process", rounds: int = 3, probe_s: float = PROBE_MS / 1000) -> LoadResult:
    """`rounds` rounds on one server: compound's run of `tasks` tasks, then the bare
    SDK's floors on as many calls, so a drift of the machine's speed falls on both."""
    with tempfile.TemporaryDirectory(prefix="load_bench_") as tmp_name:
        tmp = Path(tmp_name)
        with simulator(tmp, latency_ms=latency_ms, script={"max_subtasks": subtasks}) as sim:
            env = base_env(tmp, sim.url, COMPOUND_MAX_CONCURRENCY=str(concurrency),
                           COMPOUND_MAX_SUBTASKS=str(max(20, subtasks)),
                           COMPOUND_EXECUTOR_PROCESS=str(executor == "process").lower())
            token = create_token(env)
            bare_port = free_port()
            with compound_server(tmp, env) as server, running(
                    [str(BIN / "python"), "-m", "uvicorn", "--log-level", "warning", "--port", str(bare_port),
                     "bench.bare_app:app"], url=f"http://127.0.0.1:{bare_port}", env=env) as idle:
                result = LoadResult(tasks, subtasks, [], {}, [], 0, [], 0.0, executor=executor)
                for n in range(rounds):
                    one_round(result, server, idle, sim, token, first=n * tasks, poll_s=poll_s,
                              timeout_s=timeout_s, concurrency=concurrency, probe_s=probe_s)
                result.peak_rss_mb = server.peak_rss_mb()
            if os.environ.get("LOAD_BENCH_DUMP"):
                Path(os.environ["LOAD_BENCH_DUMP"]).write_text(json.dumps(
                    {"health": result.health_ms, "idle": result.idle_health_ms}))
            if result.http_errors:
                log = (tmp / "serve.log").read_text(errors="replace")[-3000:]
                print(f"server log tail:\n{log}", file=sys.stderr)
        return result


def one_round(result: LoadResult, server: Any, idle: Any, sim: Any, token: str, *, first: int, poll_s: float,
              timeout_s: float, concurrency: int, probe_s: float) -> None:
    """compound's run (probed), then the floors: added to `result`."""
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    probes = []
    for url in (server.url, idle.url):
        mine, theirs = ctx.Pipe()
        prober = ctx.Process(target=probe, args=(url, stop, theirs, probe_s), daemon=True)
        prober.start()
        probes.append((prober, mine))
    calls_before = model_calls(server.url)
    server_cpu, sim_cpu, machine_cpu = server.cpu_s(), sim.cpu_s(), MachineCpu.now()
    try:
        wall, statuses, errors, polls = asyncio.run(
            drive(server.url, token, tasks=result.tasks, subtasks=result.subtasks, poll_s=poll_s,
                  timeout_s=timeout_s, first=first))
    finally:
        stop.set()
        health, idle_health = ([] if not mine.poll(30) else mine.recv() for _, mine in probes)
        for prober, _ in probes:
            prober.join(10)
    server_used, sim_used = server.cpu_s() - server_cpu, sim.cpu_s() - sim_cpu
    machine_used = MachineCpu.now() - machine_cpu
    result.cpu += machine_used
    result.server_cpu_s += server_used
    result.sim_cpu_s += sim_used
    calls = model_calls(server.url) - calls_before
    result.health_ms += health
    result.idle_health_ms += idle_health
    result.http_errors += errors
    result.polls += polls
    for k, v in statuses.items():
        result.statuses[k] = result.statuses.get(k, 0) + v
    this = Round(wall, calls)
    for stack in ("httpx", "aiohttp"):
        before = sim.cpu_s()
        rate, cpu = asyncio.run(sdk_floor(sim.url, calls=calls, concurrency=concurrency, http=stack))
        this.floors[stack] = Floor(rate, cpu, sim.cpu_s() - before)
    result.rounds.append(this)
    print(f"{result.tasks} tasks ({result.executor}), round {len(result.rounds)}: {wall:.1f} s, {calls} calls, "
          f"{statuses}, {len(errors)} errors, healthz p99 so far {result.health(0.99):.1f} ms "
          f"(bare {result.health(0.99, idle=True):.1f}); calls/s {this.calls_per_s:.0f}, SDK floor "
          + ", ".join(f"{k} {f.calls_per_s:.0f}" for k, f in this.floors.items())
          + f"; aiohttp ratio {this.ratio('aiohttp'):.2f}; CPU ms a call: server {server_used / calls * 1000:.2f}, "
          f"simulator {sim_used / calls * 1000:.2f} (under the floor on aiohttp "
          f"{this.floors['aiohttp'].sim_cpu_s / calls * 1000:.2f}); machine busy "
          f"{machine_used.busy_pct:.0f}%, stolen {machine_used.stolen_pct:.1f}%",
          file=sys.stderr)


def span(values: list[float]) -> str:
    """median (min-max) of per-round figures."""
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(results: list[LoadResult], *, latency_ms: int, concurrency: int, poll_s: float, probe_ms: float,
           command: str) -> str:
    rounds = max((len(r.rounds) for r in results), default=0)
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}: one `compound serve` (SQLite file) "
        f"and the simulator (`compound sim`, {latency_ms} ms a call) in their own processes, "
        f"COMPOUND_MAX_CONCURRENCY={concurrency}, each task polled every {poll_s:g} s "
        f"(GET /v1/tasks/{{id}}), /healthz probed every {probe_ms:g} ms from another process, {rounds} rounds a row, "
        "with:",
        "",
        f"    {command}",
        "",
        "| tasks x subtasks | executor | wall (s) | statuses | HTTP errors | polls | /healthz p50 / p99 / max (ms) "
        "| idle bare app's /healthz p50 / p99 (ms) | peak RSS (MB) | model calls | calls/s "
        "| SDK floor calls/s: httpx / aiohttp | compound / floor: httpx | compound / floor: aiohttp "
        "| CPU ms per call: server / SDK httpx / SDK aiohttp | machine busy / stolen (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))
        lines.append(
            f"| {r.tasks} x {r.subtasks} | {r.executor} | {r.wall_s:.1f} | {statuses} | {len(r.http_errors)} | "
            f"{r.polls} | {r.health(0.5):.1f} / {r.health(0.99):.1f} / {max(r.health_ms or [float('nan')]):.1f} | "
            f"{r.health(0.5, idle=True):.1f} / {r.health(0.99, idle=True):.1f} | "
            f"{r.peak_rss_mb:.0f} | {r.calls} | {r.calls_per_s:.0f} | "
            f"{r.floor_per_s('httpx'):.0f} / {r.floor_per_s('aiohttp'):.0f} | "
            f"{span(r.ratios('httpx'))} | {span(r.ratios('aiohttp'))} | "
            f"{r.cpu_ms_per_call(r.server_cpu_s):.2f} / {r.floor_cpu_ms('httpx'):.2f} / "
            f"{r.floor_cpu_ms('aiohttp'):.2f} | {r.cpu.busy_pct:.0f} / {r.cpu.stolen_pct:.1f} |")
    lines += ["", "Each row is one server run through the rounds: in each, every task is submitted at once and "
              "followed to its end, then the bare SDK makes as many calls right after, so a drift of the "
              "machine's speed falls on both. wall and calls/s are medians over the rounds; compound / floor "
              "is each round's ratio, as median (min-max); /healthz and the idle bare app's /healthz pool "
              "every round's probes; statuses, polls and model calls add the rounds up. calls/s is the "
              "server's model calls (planner, subtasks, synthesis: from its /metrics) over the wall time from "
              "the first submission to the last task's end (its `completed_at`, as the server recorded it; "
              "the poll that sees it comes up to a second later); the SDK floor is "
              "AsyncAnthropic making as many calls, as many at a time, to the same simulator, on "
              "the SDK's default HTTP client (httpx) and on its aiohttp client (the one compound uses). CPU "
              "per call is the server's CPU over its runs (its process and the executor's child process, "
              "serving the polls and probes included; peak RSS adds theirs up too) and "
              "the bare SDK's process CPU, over the calls. Machine busy and stolen are shares of every "
              "core's time from each round's first submission to its last poll (/proc/stat): busy is any "
              "process's user and system time, "
              "stolen the time a virtual core was ready while its host ran other guests. "
              "The idle bare app's /healthz shows what the machine's own scheduling adds to any probe "
              "(it shares 2 cores with the server, the simulator, the client and other work). "
              "executor: `process` is `compound serve` as it runs by default (the executor in a child "
              "process); `loop` is COMPOUND_EXECUTOR_PROCESS=false (on the server's own event loop), "
              "run right after it for the comparison.", ""]
    for r in results:
        done = r.statuses.get("completed", 0) == r.tasks * len(r.rounds) and not r.http_errors
        checks = [f"all {r.tasks * len(r.rounds)} completed with no HTTP error: {'yes' if done else 'NO'}"]
        if r.tasks <= 300:
            checks.append(f"/healthz p99 <= 20 ms: {'yes' if r.health(0.99) <= 20 else 'NO'}")
            bare = r.health(0.99, idle=True)
            checks.append(f"/healthz p99 <= 2x the bare app's ({r.health(0.99):.1f} / {bare:.1f} ms): "
                          f"{'yes' if r.health(0.99) <= 2 * bare else 'NO'}")
        else:
            checks.append(f"peak RSS <= 500 MB: {'yes' if r.peak_rss_mb <= 500 else 'NO'}")
        ratios = r.ratios("aiohttp")
        if ratios:
            ratio = statistics.median(ratios)
            checks.append(f"throughput >= 0.6x the bare SDK on aiohttp (median {ratio:.2f}x): "
                          f"{'yes' if ratio >= 0.6 else 'NO'}")
        lines.append(f"- {r.tasks} x {r.subtasks}, {r.executor}: " + "; ".join(checks) + ".")
        for err in r.http_errors[:3]:
            lines.append(f"  - e.g. {err}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file")
    parser.add_argument("--tasks", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--subtasks", type=int, default=10)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--probe-ms", type=float, default=PROBE_MS, help="the /healthz probes' period")
    parser.add_argument("--executor", nargs="+", choices=["process", "loop"], default=["process", "loop"],
                        help="where the server runs its executor; each size runs with each, in this order")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per size and executor, each compound's run then the bare SDK's")
    args = parser.parse_args()
    results = [run(tasks=n, subtasks=args.subtasks, latency_ms=args.latency_ms, concurrency=args.concurrency,
                   poll_s=args.poll_s, timeout_s=args.timeout_s, executor=e, rounds=args.rounds,
                   probe_s=args.probe_ms / 1000)
               for n in args.tasks for e in args.executor]
    command = ".venv/bin/python bench/load_bench.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a != "--write" and not a.endswith(".md")) + " --write docs/benchmarks.md"
    text = report(results, latency_ms=args.latency_ms, concurrency=args.concurrency, poll_s=args.poll_s,
                  probe_ms=args.probe_ms, command=command)
    print(text)
    if args.write:
        name = "load_bench" + "".join(f"_{n}" for n in args.tasks if args.tasks != [300, 1000])
        write_section(args.write, name, f"Load: {' and '.join(map(str, args.tasks))} tasks through one server",
                      text)


if __name__ == "__main__":
    main()
