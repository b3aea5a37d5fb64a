"""Benchmark of the model-call seam: CPU per call and wall time for N calls,
compound's adapter against the bare provider SDK, both providers, in one run.

    .venv/bin/python bench/client_bench.py [--calls 3000] [--concurrency 256] [--write docs/benchmarks.md]

The provider simulator runs in a separate process (its CPU is not counted); this
process makes the calls. Per variant: N calls at the given concurrency, CPU = this
process's CPU time over the run / N. Variants run interleaved, `--rounds` times each,
and the median is reported (the machine is shared and noisy).
  compound   build_client(settings).complete(...): the registry and the SDK adapter
  bare SDK   AsyncAnthropic.messages.create / AsyncOpenAI.chat.completions.create with
             the same connection pool, the same request, nothing else, on each of the
             SDK's HTTP clients: aiohttp (what compound uses by default) and httpx
  litellm    compound's litellm adapter forced onto the same model (the old path)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compound.core.settings import ModelConfig, Settings
from compound.llm import build_client
from compound.llm.base import Message
from compound.simulator import free_port

ANTHROPIC = "anthropic/claude-haiku-4-5"
OPENAI = "openai/gpt-4.1-mini"
SYSTEM = "You are compound's worker.\nAnswer with the result of your subtask only."
USER = "<request>\ncompare three vendors on price and support\n</request>\n<subtask>\nfind the prices\n</subtask>"
MESSAGES: list[Message] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
MARKER = "<!-- client_bench -->"

Call = Callable[[], Awaitable[Any]]


def start_simulator() -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    code = f"from compound.simulator import run_simulator; run_simulator('127.0.0.1', {port})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the simulator did not start")


ERRORS: dict[str, int] = {}


async def run(call: Call, calls: int, concurrency: int, name: str = "") -> tuple[float, float]:
    """(CPU ms per call, wall s) for `calls` calls, `concurrency` in flight. A failed
    call (a loaded machine can starve the simulator) is counted, and reported."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                await call()
            except Exception:
                ERRORS[name] = ERRORS.get(name, 0) + 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu0) / calls * 1000, time.perf_counter() - wall0


def variants(url: str, concurrency: int) -> tuple[dict[str, Call], list[Any]]:
    """The calls to time, and the clients to close at the end."""
    import anthropic
    import openai
    from anthropic._constants import DEFAULT_CONNECTION_LIMITS

    settings = Settings(
        max_concurrency=concurrency, call_timeout_s=120,
        tier1_models=[ANTHROPIC, OPENAI], tier2_models=[ANTHROPIC], tier3_models=[ANTHROPIC],
        models={ANTHROPIC: ModelConfig(api_base=url), OPENAI: ModelConfig(api_base=url + "/v1")},
    )
    compound = build_client(settings)
    forced = {m: c.model_copy(update={"adapter": "litellm"}) for m, c in settings.models.items()}
    via_litellm = build_client(settings.model_copy(update={"models": forced}))
    limits = type(DEFAULT_CONNECTION_LIMITS)(max_connections=concurrency, max_keepalive_connections=concurrency)
    bare_a = {http: anthropic.AsyncAnthropic(api_key="sim", base_url=url, max_retries=0, timeout=120,
                                             http_client=make(limits=limits))
              for http, make in (("httpx", anthropic.DefaultAsyncHttpxClient),
                                 ("aiohttp", anthropic.DefaultAioHttpClient))}
    bare_o = {http: openai.AsyncOpenAI(api_key="sim", base_url=url + "/v1", max_retries=0, timeout=120,
                                       http_client=make(limits=limits))
              for http, make in (("httpx", openai.DefaultAsyncHttpxClient),
                                 ("aiohttp", openai.DefaultAioHttpClient))}
    user = [{"role": "user", "content": USER}]
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    table: dict[str, Call] = {
        "anthropic / compound": lambda: compound.complete(model=ANTHROPIC, messages=MESSAGES, max_tokens=256),
        "openai / compound": lambda: compound.complete(model=OPENAI, messages=MESSAGES, max_tokens=256),
        "anthropic / litellm": lambda: via_litellm.complete(model=ANTHROPIC, messages=MESSAGES, max_tokens=256),
        "openai / litellm": lambda: via_litellm.complete(model=OPENAI, messages=MESSAGES, max_tokens=256),
    }
    for http in ("aiohttp", "httpx"):
        a, o = bare_a[http], bare_o[http]
        table[f"anthropic / bare SDK ({http})"] = lambda a=a: a.messages.create(  # type: ignore[misc]
            model="claude-haiku-4-5", system=SYSTEM, messages=user, max_tokens=256)
        table[f"openai / bare SDK ({http})"] = lambda o=o: o.chat.completions.create(  # type: ignore[misc]
            model="gpt-4.1-mini", messages=chat, max_tokens=256)
    return dict(sorted(table.items())), [compound, via_litellm, *bare_a.values(), *bare_o.values()]


async def main_async(calls: int, concurrency: int, rounds: int, write: Path | None, litellm: bool) -> None:
    proc, url = start_simulator()
    try:
        table, clients = variants(url, concurrency)
        if not litellm:
            table = {k: v for k, v in table.items() if "litellm" not in k}
        for call in table.values():  # warm: connections, imports, price lookups
            await run(call, min(calls, concurrency * 2), concurrency)
        cpu: dict[str, list[float]] = {k: [] for k in table}
        wall: dict[str, list[float]] = {k: [] for k in table}
        for r in range(rounds):
            for name, call in table.items():
                c, w = await run(call, calls, concurrency, name)
                cpu[name].append(c)
                wall[name].append(w)
                print(f"round {r + 1} {name}: {c:.3f} ms CPU per call, {w:.2f} s wall", flush=True)
        for client in clients:
            await (client.aclose() if hasattr(client, "aclose") else client.close())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    lines = [f"| variant | CPU ms per call | wall s for {calls} calls | CPU / bare SDK on aiohttp (compound's transport) "
             "| failed calls |",
             "|---|---|---|---|---|"]
    for name in table:
        provider = name.split(" / ")[0]
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        base = statistics.median(cpu[f"{provider} / bare SDK (aiohttp)"])
        lines.append(f"| {name} | {c:.3f} | {w:.2f} | {c / base:.2f} | {ERRORS.get(name, 0)} |")
    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}: {calls} calls at concurrency "
        f"{concurrency} per variant, variants interleaved, median of {rounds} rounds, the simulator in "
        f"another process, with:\n\n    .venv/bin/python bench/client_bench.py --calls {calls} "
        f"--concurrency {concurrency} --rounds {rounds}{'' if litellm else ' --no-litellm'} --write docs/benchmarks.md\n"
    )
    report = header + "\n" + "\n".join(lines) + "\n"
    print(report)
    if write is not None:
        replace_section(write, MARKER, "## Model calls: compound's adapters against the bare SDKs", report)


def replace_section(path: Path, marker: str, title: str, body: str) -> None:
    """Put `body` between a pair of `marker` lines in the markdown file (appended once)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{marker}\n{title}\n\n{body}{marker}\n"
    if text.count(marker) >= 2:
        head, _old, tail = text.split(marker, 2)
        text = head + section + "\n" + tail.lstrip("\n")
        path.write_text(text)
    else:
        path.write_text(text.rstrip() + "\n\n" + section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-litellm", action="store_true", help="skip the litellm rows")
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file")
    args = parser.parse_args()
    asyncio.run(main_async(args.calls, args.concurrency, args.rounds, args.write, not args.no_litellm))


if __name__ == "__main__":
    main()
