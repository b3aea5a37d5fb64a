"""Ctrl-C on `compound run`: a real process, a real SIGINT while
the simulator holds a call in flight. The task ends `canceled`, its cost so far and
the held amount are printed; a second Ctrl-C exits at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from compound.simulator import Simulator
from compound.store.db import make_engine
from compound.store.models import LedgerEntry, Task

PLAN = {"subtasks": [{"description": "quick step", "tier_hint": 1, "depends_on": []},
                     {"description": "hold this step", "tier_hint": 1, "depends_on": [0]}]}


def _start(sim: Simulator, sqlite_url: str, tmp_path: Path) -> subprocess.Popen[str]:
    sim.script.latency_rules = [("hold this step", 120.0)]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    env = {**os.environ, "COMPOUND_DATABASE_URL": sqlite_url, "ANTHROPIC_BASE_URL": sim.url,  # type: ignore[attr-defined]
           "ANTHROPIC_API_KEY": "sim", "OPENAI_BASE_URL": sim.url + "/v1", "OPENAI_API_KEY": "sim",  # type: ignore[attr-defined]
           "COMPOUND_LOG_LEVEL": "WARNING", "COLUMNS": "100"}
    env.pop("COMPOUND_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "compound.cli", "run", "stop me", "--plan", str(plan)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any("hold this step" in c["text"] for c in sim.calls("worker")):  # the call is in flight
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the held call never reached the simulator"
        time.sleep(0.05)
    return proc


def test_ctrl_c_cancels_the_task_and_shows_the_cost(sim: Simulator, sqlite_url: str, tmp_path: Path) -> None:
    proc = _start(sim, sqlite_url, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "canceling the task" in err
    flat = " ".join(out.split())
    assert "error: canceled by request" in flat and "cost so far $" in flat
    assert "held for calls canceled in flight" in flat, flat
    # the final cost table names the call booked at its worst case, and how much it is
    assert "booked at the worst case" in flat and "worst case: 1 call(s)" in flat, flat
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        status = conn.execute(select(Task.status)).scalar_one()  # type: ignore[call-overload]
        ledger = conn.execute(select(LedgerEntry.status)).scalars().all()  # type: ignore[call-overload]
    assert status == "canceled"
    assert "canceled" in ledger and "reserved" not in ledger


def test_a_second_ctrl_c_exits_at_once(sim: Simulator, sqlite_url: str, tmp_path: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("SKIPPED: POSIX signals")
    proc = _start(sim, sqlite_url, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
