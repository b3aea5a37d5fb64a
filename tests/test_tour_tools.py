"""The README's tour, run for real: its one-terminal block of lines, as written, in bash
(the simulator, the demo MCP server, `serve`, a token, tasks submitted and watched), on
free ports and a fresh database; the task whose plan names a tool calls it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from compound.tools.demo import FACTS
from tests.fixtures.mcp_tools import ROOT
from tests.fixtures.served import free_port

TOUR_HEADING = "## A tour without a provider key"


def tour_block() -> str:
    """The first bash block of the README's tour section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(TOUR_HEADING):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None, "the tour has no bash block"
    return match.group(1)


def localised(block: str, *, ports: dict[int, int], plan: Path) -> str:
    """The block on the test's own ports, plan file and Python, with a short latency."""
    cli = f"{shlex.quote(sys.executable)} -m compound.cli "
    out = block.replace("./dev ", cli).replace("--latency 1.5", "--latency 0.05")
    out = out.replace("/tmp/tour-plan.json", str(plan))
    for old, new in ports.items():
        out = re.sub(rf"(127\.0\.0\.1:|--port ){old}\b", rf"\g<1>{new}", out)
    return out


@pytest.mark.timeout(600)  # some 15 CLI processes start one after the other
def test_the_tour_runs_and_its_tool_task_calls_the_demo_server(tmp_path: Path) -> None:
    ports = {8787: free_port(), 9100: free_port(), 8000: free_port()}
    block = tour_block()
    for line in ("./dev tools demo-server --port 9100 &", "COMPOUND_MCP_SERVERS=", "./dev tools list",
                 '"tools": ["demo.lookup"]', '"kind": "tool"'):
        assert line in block, line
    # The service must see the servers' setting: the export comes before `serve`.
    assert block.index("COMPOUND_MCP_SERVERS=") < block.index("./dev serve")
    snapshot = tmp_path / "snapshot.json"
    script = "set -eu\n" + localised(block, ports=ports, plan=tmp_path / "plan.json") + (
        f'curl -sf -H "Authorization: Bearer $COMPOUND_TOKEN" "$COMPOUND_URL/v1/tasks/$ID" > {snapshot}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOUND_", "ANTHROPIC_", "OPENAI_"))}
    env.update(COMPOUND_DATABASE_URL=f"sqlite:///{tmp_path / 'tour.db'}",
               COMPOUND_URL=f"http://127.0.0.1:{ports[8000]}", COLUMNS="200", PYTHONPATH=str(ROOT))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    # Files, not pipes: the background processes keep their output open after bash ends.
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=o, stderr=e,
                                start_new_session=True)
        try:
            proc.wait(timeout=540)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the tour's background processes: sim, demo server, serve
            proc.wait()
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"

    assert "tools: demo.lookup" in stdout  # `plan` sees the demo server's tools
    assert all(name in stdout for name in ("demo.lookup", "demo.note", "demo.notes"))  # `tools list`
    snap = json.loads(snapshot.read_text())
    assert snap["status"] == "completed", snap
    calls = {s["index"]: s["tool_calls"] for s in snap["subtasks"]}
    looped, direct = calls[0], calls[1]
    assert [(c["tool"], c["status"], c["result"]) for c in looped] == [
        ("demo.lookup", "ok", FACTS["anthropic"])]  # the simulated model calls the first tool offered
    assert [(c["tool"], c["arguments"], c["status"], c["result"]) for c in direct] == [
        ("demo.lookup", {"topic": "openai"}, "ok", FACTS["openai"])]
    assert snap["subtasks"][1]["result"] == FACTS["openai"]
    # the tour's last line prints each call: subtask, tool, arguments, status, result
    assert f"1 demo.lookup {{'topic': 'openai'}} ok {FACTS['openai']}" in stdout
