"""Benchmarks of queue mode: throughput with 1 and 2 workers at a per-worker
cap (latency-bound), task start latency through the DBOS queue (submit → `planning`),
and DBOS-on-SQLite start latency (the embedded default's question).

    .venv/bin/python bench/scale_bench.py [--write docs/benchmarks.md]

Needs PostgreSQL on 127.0.0.1:5432 (a fresh database is made and dropped). Runs real
processes: the provider simulator, one `compound serve` (COMPOUND_EXECUTION=queue) and
`compound worker`s; 1 then 2 workers side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.fixtures.cluster import TERMINAL, Cluster, wait_until  # noqa: E402

CALL_S = 1.0  # the simulator's latency per call: the run is latency-bound
PROBE_CALL_S = 0.02  # the start-latency tasks' calls: each ends soon, the next finds the workers idle


def plan(name: str) -> dict[str, Any]:
    return {"subtasks": [
        {"description": f"part A of {name}", "tier_hint": 1, "depends_on": []},
        {"description": f"part B of {name}", "tier_hint": 1, "depends_on": []},
        {"description": f"join of {name}", "tier_hint": 2, "depends_on": [0, 1]}]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def throughput(c: Cluster, api: int, n: int, tag: str) -> float:
    """Tasks per second for n tasks submitted at once."""
    start = time.perf_counter()
    ids = [c.submit(api, {"prompt": f"{tag} {i}", "plan": plan(f"{tag}-{i}")})["id"] for i in range(n)]

    def finished() -> bool:
        rows = c.sql("SELECT count(*) FROM task WHERE id = ANY(:ids) AND status = ANY(:t)", ids=ids, t=list(TERMINAL))
        return bool(rows[0][0] == n)

    wait_until(finished, timeout=600, what=f"{n} tasks", every=0.05)
    return n / (time.perf_counter() - start)


PLANNING_AT = ("SELECT extract(epoch FROM created_at) FROM task_event WHERE task_id = %s "
               "AND kind = 'task' AND data::json->>'status' = 'planning'")
ENDED = "SELECT status = ANY(%s) FROM task WHERE id = %s"


def start_latency(c: Cluster, api: int, n: int) -> list[float]:
    """Milliseconds from the POST to the task's `planning` event (its row's time, taken
    by the process that wrote it), one task at a time: the next is sent once the last
    has ended, so each finds a worker with room (a task that waits for a free slot
    measures the caps, not the start path). The observer costs the machine next to
    nothing: one HTTP connection kept open, and one database connection that LISTENs
    to the store's events and reads only when one arrives."""
    import httpx
    import psycopg

    from compound.store.pg_notify import EVENTS as CHANNEL
    from compound.store.pg_notify import libpq_url

    out = []
    with httpx.Client(headers=c.headers(), timeout=120) as http, \
            psycopg.connect(libpq_url(c.env["COMPOUND_DATABASE_URL"]), autocommit=True) as db:
        db.execute(f"LISTEN {CHANNEL}")
        url = f"http://127.0.0.1:{api}/v1/tasks"

        def until(query: str, params: tuple[Any, ...], what: str) -> Any:
            deadline = time.monotonic() + 60
            while not (row := db.execute(query, params).fetchone()) or not row[0]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what}: not within 60 s")
                for _ in db.notifies(timeout=1.0, stop_after=1):  # an event was written: look again
                    pass
            return row[0]

        for i in range(n):
            sent = time.time()
            r = http.post(url, json={"prompt": f"probe-{i}", "plan": plan(f"probe-{i}")})
            assert r.status_code == 202, r.text
            tid = r.json()["id"]
            out.append((float(until(PLANNING_AT, (tid,), f"{tid} planning")) - sent) * 1000)
            until(ENDED, (list(TERMINAL), tid), f"{tid} ended")
    return out


def cpu_percent(pids: list[int], seconds: float) -> list[float]:
    """Each process's CPU use over `seconds`, in % of one core (Linux /proc)."""
    def ticks(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = [ticks(p) for p in pids]
    time.sleep(seconds)
    hz = os.sysconf("SC_CLK_TCK")
    return [100 * (ticks(p) - b) / hz / seconds for p, b in zip(pids, before, strict=True)]


SQLITE_PROBE = r'''
import asyncio, json, sys, tempfile, time
from pathlib import Path
from dbos import DBOS
interval = float(sys.argv[1])
started = {}
@DBOS.workflow(name="probe")
async def probe(i: int) -> None:
    started[i] = time.time()
async def main() -> None:
    db = Path(tempfile.mkdtemp()) / "dbos.sqlite"
    DBOS(config={"name": "probe", "system_database_url": f"sqlite:///{db}", "log_level": "ERROR"})
    DBOS.launch()
    q = await DBOS.register_queue_async("probe", polling_interval_sec=interval)
    await asyncio.sleep(1.5)  # the queue thread finds the new queue
    lat = []
    for i in range(40):
        t = time.time()
        h = await q.enqueue_async(probe, i)
        await h.get_result()
        lat.append((started[i] - t) * 1000)
    print(json.dumps(lat))
    DBOS.destroy()
asyncio.run(main())
'''


def sqlite_latency(interval: float) -> list[float]:
    out = subprocess.run([sys.executable, "-c", SQLITE_PROBE, str(interval)], capture_output=True, text=True,
                         check=True, timeout=300)
    import json

    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file")
    parser.add_argument("--tasks", type=int, default=32, help="tasks per throughput run")
    parser.add_argument("--per-worker", type=int, default=4, help="COMPOUND_WORKER_CONCURRENCY")
    parser.add_argument("--samples", type=int, default=60, help="tasks for the start latency")
    parser.add_argument("--polling", type=float, default=None,
                        help="COMPOUND_QUEUE_POLLING_INTERVAL_S (default: the setting's default)")
    args = parser.parse_args()
    from compound.core.settings import Settings

    polling = args.polling if args.polling is not None else Settings().queue_polling_interval_s
    env = {"COMPOUND_WORKER_CONCURRENCY": str(args.per_worker), "COMPOUND_QUEUE_POLLING_INTERVAL_S": str(polling)}

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(Path(tmp), script={"latency_s": CALL_S, "latency_rules": [["probe-", PROBE_CALL_S]]},
                    env=env).start()
        try:
            api = c.start_api()
            c.start_worker()
            c.wait_workers_ready(1)
            throughput(c, api, 4, "warm1")
            one = throughput(c, api, args.tasks, "one")
            c.start_worker()
            c.wait_workers_ready(2)
            throughput(c, api, 8, "warm2")
            two = throughput(c, api, args.tasks, "two")
            idle = cpu_percent([w.pid for w in c.workers], 5.0)  # every task has ended
            lat = start_latency(c, api, args.samples)
            # The same measure without the queue: an in-process API on the same database
            # (what the machine's load alone costs a POST → `planning`).
            inproc = c.start_apis(1, COMPOUND_EXECUTION="inprocess")[0]
            base = start_latency(c, inproc, args.samples)
            load = os.getloadavg()[0]
        finally:
            c.stop()
    lines.append(f"Throughput, {args.tasks} tasks at once (3 subtasks + synthesis each, {CALL_S * 1000:.0f} ms a call, "
                 f"COMPOUND_WORKER_CONCURRENCY={args.per_worker}):\n")
    lines.append("| workers | tasks/s | ratio |")
    lines.append("|---|---|---|")
    lines.append(f"| 1 | {one:.2f} | 1.00 |")
    lines.append(f"| 2 | {two:.2f} | {two / one:.2f} |")
    lines.append("")
    lines.append(f"Start latency through the queue, POST → `planning` event, {args.samples} tasks one at a time "
                 f"(the next one sent once the last has ended: the workers are idle), 2 workers, COMPOUND_QUEUE_POLLING_INTERVAL_S={polling:g}:\n")
    lines.append("| path | p50 ms | p90 ms | p99 ms | max ms |")
    lines.append("|---|---|---|---|---|")
    for name, xs in (("queue (DBOS, 2 workers)", lat), ("inprocess (same machine, same run)", base)):
        lines.append(f"| {name} | {pct(xs, .5):.1f} | {pct(xs, .9):.1f} | {pct(xs, .99):.1f} | {max(xs):.1f} |")
    lines.append("")
    lines.append(f"CPU of each idle worker (5 s, no task anywhere): {', '.join(f'{x:.1f}' for x in idle)} % of a core.")
    lines.append("")
    lines.append(f"Load average (1 min) at the end of the cluster runs: {load:.1f} on {os.cpu_count()} cores.")
    lines.append("")
    lines.append("DBOS on SQLite (the embedded default's question), enqueue → workflow body running, 40 "
                 "workflows one at a time, in one process:\n")
    lines.append("| polling_interval_sec | p50 ms | p99 ms |")
    lines.append("|---|---|---|")
    for interval in (1.0, 0.01):
        s = sqlite_latency(interval)
        lines.append(f"| {interval:g} | {statistics.median(s):.1f} | {pct(s, .99):.1f} |")

    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}, with:\n\n"
              f"    .venv/bin/python bench/scale_bench.py {' '.join(sys.argv[1:])}\n")
    report = header + "\n" + "\n".join(lines) + "\n"
    print(report)
    if args.write is not None:
        text = args.write.read_text() if args.write.exists() else "# Benchmarks\n"
        marker = "<!-- scale_bench -->"
        parts = text.split(marker)
        head = parts[0].rstrip() + "\n\n"
        tail = parts[2] if len(parts) >= 3 else ""
        args.write.write_text(head + marker + "\n## Queue mode: workers, throughput, start latency\n\n" + report
                              + marker + tail)


if __name__ == "__main__":
    main()
