"""Processes the HTTP benchmarks drive: the provider simulator, `compound serve` on a
fresh SQLite file, a bare FastAPI app, and wrk; plus the docs/benchmarks.md writer."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[int]:
        """The process and its descendants now (`compound serve`'s executor runs in a
        child process of its own)."""
        pids, i = [self.pid], 0
        while i < len(pids):
            for task in Path(f"/proc/{pids[i]}/task").glob("*"):
                with contextlib.suppress(OSError):
                    pids += [int(c) for c in (task / "children").read_text().split()]
            i += 1
        return pids

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process and its children have used so far,
        the reaped ones included (Linux /proc)."""
        total = 0.0
        for pid in self.tree():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return total

    def peak_rss_mb(self) -> float:
        """The peak resident set (Linux VmHWM) of the process and its children, added up."""
        total = 0.0
        for pid in self.tree():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
        return total


@contextmanager
def running(args: list[str], *, url: str, env: dict[str, str], health: str = "/healthz",
            log: Path | None = None) -> Iterator[Proc]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    popen = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_http(url + health)
        yield Proc(popen, url)
    finally:
        popen.send_signal(signal.SIGINT)
        try:
            popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def base_env(tmp: Path, sim_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOUND_")}
    env.update({
        "COMPOUND_DATABASE_URL": f"sqlite:///{tmp / 'compound.db'}",
        "ANTHROPIC_BASE_URL": sim_url, "ANTHROPIC_API_KEY": "sim",
        "OPENAI_BASE_URL": sim_url + "/v1", "OPENAI_API_KEY": "sim",
        "COMPOUND_LOG_LEVEL": "WARNING", "COMPOUND_RATE_LIMIT_PER_MINUTE": "0",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
    })
    env.update(extra)
    return env


@contextmanager
def simulator(tmp: Path, *, latency_ms: int = 0, script: dict[str, Any] | None = None) -> Iterator[Proc]:
    port = free_port()
    args = [str(BIN / "compound"), "sim", "--port", str(port), "--latency-ms", str(latency_ms)]
    if script is not None:
        path = tmp / "sim.json"
        path.write_text(json.dumps(script))
        args += ["--script", str(path)]
    with running(args, url=f"http://127.0.0.1:{port}", env=dict(os.environ), log=tmp / "sim.log") as proc:
        yield proc


@contextmanager
def compound_server(tmp: Path, env: dict[str, str]) -> Iterator[Proc]:
    port = free_port()
    with running([str(BIN / "compound"), "serve", "--port", str(port)], url=f"http://127.0.0.1:{port}",
                 env=env, log=tmp / "serve.log") as proc:
        yield proc


def create_token(env: dict[str, str], user: str = "bench") -> str:
    out = subprocess.run([str(BIN / "compound"), "tokens", "create", "--user", user],
                         env=env, capture_output=True, check=True, cwd=ROOT)
    return out.stdout.decode().strip()


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(rps, p50, p99, int(non2xx.group(1)) if non2xx else 0,
                     sum(int(g) for g in errs.groups()) if errs else 0)


def wrk(url: str, *, connections: int, seconds: int, threads: int = 2,
        headers: dict[str, str] | None = None) -> WrkResult:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")
    args = [exe, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, check=True, text=True).stdout
    return parse_wrk(out)


@dataclass(frozen=True)
class MachineCpu:
    """The machine's CPU time so far (Linux /proc/stat, every core, in seconds): busy is
    user, system and interrupts; stolen is time a virtual core was ready to run while
    the hypervisor ran something else on its host (the "steal" field)."""

    busy_s: float = 0.0
    stolen_s: float = 0.0
    total_s: float = 0.0

    @classmethod
    def now(cls) -> MachineCpu:
        try:
            fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return cls()
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
        tick = os.sysconf("SC_CLK_TCK")
        return cls((user + nice + system + irq + softirq) / tick, steal / tick, sum(fields) / tick)

    def __sub__(self, before: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy_s - before.busy_s, self.stolen_s - before.stolen_s, self.total_s - before.total_s)

    def __add__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy_s + other.busy_s, self.stolen_s + other.stolen_s, self.total_s + other.total_s)

    @property
    def busy_pct(self) -> float:
        """Busy time as a percentage of every core's time in the interval."""
        return 100 * self.busy_s / self.total_s if self.total_s else float("nan")

    @property
    def stolen_pct(self) -> float:
        """Stolen time as a percentage of every core's time in the interval."""
        return 100 * self.stolen_s / self.total_s if self.total_s else float("nan")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(path: Path, name: str, title: str, body: str) -> None:
    """Put `body` under `title` between `<!-- name -->` markers, replacing a previous
    run's section or appending a new one; the rest of the file is kept."""
    marker = f"<!-- {name} -->"
    section = f"{marker}\n## {title}\n\n{body.rstrip()}\n{marker}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if text.count(marker) >= 2:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
