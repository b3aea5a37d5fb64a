"""The dashboard end to end in headless Chromium (Debian's package, driven by
Playwright's Python package; no browser download). Skips, saying so, when either is
missing. Every wait is on state: the simulator holds a subtask's call until the page
shows it running, and the test releases it then. COMPOUND_SCREENSHOT=path saves a
screenshot (docs/dashboard.png is made this way)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compound.api.app import create_app
from compound.core.settings import Settings
from compound.llm.litellm_client import LiteLLMClient
from compound.simulator import Simulator
from compound.store.users import create_token
from tests.fixtures.served import serving_in_thread

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]  # Chromium on a loaded machine
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # a generous deadline for a state, never a pause


@pytest.fixture
def server(sim: Simulator, sim_settings: Settings) -> Iterator[tuple[str, str, str]]:
    sim.script.holds = {"hold step two": threading.Event(), "hold forever": threading.Event()}
    app = _app(sim_settings)
    with serving_in_thread(app) as url:
        token = create_token(app.state.store.engine, "dana")[1]
        admin = create_token(app.state.store.engine, "root", ["admin"])[1]
        try:
            yield url, token, admin
        finally:
            for released in sim.script.holds.values():
                released.set()


def _signed_in(pw: Any, url: str, token: str, fragment: str = "") -> tuple[Any, Any]:
    """Chromium on the dashboard (`#fragment`: a task to open), signed in with `token`:
    (browser, page)."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/dashboard" + (f"#{fragment}" if fragment else ""))
    page.fill("#token", token)
    page.click("#login-form button")
    return browser, page


def _app(settings: Settings, **update: Any) -> Any:
    # the simulator answers at once (holds aside): a long call timeout only keeps a loaded
    # machine's slow first call from failing
    settings = settings.model_copy(update={"rate_limit_per_minute": 1000, "call_timeout_s": 120.0, **update})
    return create_app(settings, client=LiteLLMClient(settings))


def _wait_status(url: str, auth: dict[str, str], task_id: str, status: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while (task := httpx.get(f"{url}/v1/tasks/{task_id}", headers=auth).json())["status"] != status:
        assert task["status"] not in ("failed", "partial", "canceled"), task["error"]
        assert time.monotonic() < deadline, f"{task_id} never became {status}"
        time.sleep(0.05)


# COMPOUND_BROWSER_REPEAT=20 runs it 20 times in one session (each with a fresh server
# and browser): a check that it is not flaky.
@pytest.mark.parametrize("attempt", range(int(os.environ.get("COMPOUND_BROWSER_REPEAT", "1"))))
def test_dashboard_shows_costs_and_live_task(server: tuple[str, str, str], sim: Simulator, attempt: int) -> None:
    if CHROMIUM is None:
        pytest.skip("SKIPPED: no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="SKIPPED: playwright is not installed")
    url, token, admin = server
    auth = {"Authorization": f"Bearer {token}"}
    first = httpx.post(f"{url}/v1/tasks", headers=auth, json={"prompt": "warm up and check"}).json()
    _wait_status(url, auth, first["id"], "completed")
    plan = {"subtasks": [{"description": "quick step one", "tier_hint": 1, "depends_on": []},
                         {"description": "hold step two, a long label that cannot fit its node", "tier_hint": 2,
                          "depends_on": [0]}]}
    running = httpx.post(f"{url}/v1/tasks", headers=auth,
                         json={"prompt": "watch me [red]<b>x</b>", "plan": plan}).json()

    with sync_api.sync_playwright() as pw:
        browser, page = _signed_in(pw, url, token)
        page.wait_for_selector("#cost-chart rect.day", state="attached")
        spent_days = page.eval_on_selector_all("#cost-chart rect.day", "els => els.filter(e => +e.dataset.cost > 0).length")
        assert spent_days >= 1
        page.wait_for_selector(f'#recent tr[data-task-id="{first["id"]}"]')
        assert "claude-haiku-4-5" in page.inner_text("#by-model")
        assert page.is_hidden("#users")  # the cost per user is an admin's view

        # the finished task's cost by part: planner, each subtask, synthesis, adding up to its total
        page.click(f'#recent tr[data-task-id="{first["id"]}"]')
        page.wait_for_selector('#task-costs g.part[data-part="synthesis"]', state="attached")
        snap = httpx.get(f"{url}/v1/tasks/{first['id']}", headers=auth).json()
        parts = page.eval_on_selector_all("#task-costs g.part", "gs => gs.map(g => [g.dataset.part, +g.dataset.cost])")
        assert [p for p, _ in parts] == ["planner", *[f"subtask {s['index']}" for s in snap["subtasks"]], "synthesis"]
        assert abs(sum(c for _, c in parts) - snap["total_cost_usd"]) <= 1e-6 * len(parts)
        assert dict(parts)["synthesis"] == snap["synthesis"]["cost_usd"] > 0
        assert page.is_hidden("#task-worst")  # nothing booked at the worst case

        # the held task: step two stays running at the simulator until the page shows it so
        page.click(f'#recent tr[data-task-id="{running["id"]}"]')
        page.wait_for_selector('#dag g.node[data-index="1"][data-status="running"]', state="attached")
        assert page.inner_text("#task-prompt") == "watch me [red]<b>x</b>"  # shown as text, never markup
        assert page.evaluate("() => { const r = document.querySelector('#task-view').getBoundingClientRect();"
                             " return r.top >= 0 && r.top < window.innerHeight; }"), "the task panel is not in view"
        page.wait_for_function("() => !document.querySelector('#task-cost').textContent.startsWith('$0.000000')")
        row_cost = page.inner_text(f'#recent tr[data-task-id="{running["id"]}"] td.num:nth-of-type(4)')
        assert float(row_cost) > 0
        label_fits = page.evaluate("() => [...document.querySelectorAll('#dag g.node')].every(g => "
                                   "g.querySelector('text').getComputedTextLength() <= 160 - 8)")
        assert label_fits
        assert page.is_visible("#cancel") and not page.is_visible("#approve")
        sim.script.holds["hold step two"].set()
        page.wait_for_selector('#dag g.node[data-index="1"][data-status="completed"]', state="attached")
        page.wait_for_selector('#task-status[data-status="completed"]', state="attached")
        page.wait_for_function("() => document.querySelector('#task-result').textContent.startsWith('Final answer')")
        page.wait_for_selector(f'#recent tr[data-task-id="{running["id"]}"][data-status="completed"]')
        assert not page.is_visible("#cancel")
        page.click('#dag g.node[data-index="1"]')
        assert "Result of subtask: hold step two" in page.inner_text("#node-result")
        shot = os.environ.get("COMPOUND_SCREENSHOT")
        if shot:
            page.screenshot(path=str(Path(shot)), full_page=True)

        # submit from the page, held for approval, then approve
        page.fill("#new-prompt", "approve me")
        page.check("#new-hold")
        page.click("#submit-form button")
        page.wait_for_selector('#task-status[data-status="planned"]', state="attached")
        page.wait_for_selector("#approve", state="visible")
        page.click("#approve")
        page.wait_for_selector('#task-status[data-status="completed"]', state="attached")

        # submit, then cancel while its call is held in flight
        page.uncheck("#new-hold")
        sim.answer("planner", '{"reasoning": "one step", "subtasks": [{"description": "hold forever", '
                              '"tier_hint": 1, "depends_on": []}]}')
        page.fill("#new-prompt", "cancel me")
        page.click("#submit-form button")
        page.wait_for_selector('#dag g.node[data-index="0"][data-status="running"]', state="attached")
        page.click("#cancel")
        page.wait_for_selector('#task-status[data-status="canceled"]', state="attached")
        assert "canceled by request" in page.inner_text("#task-error")
        # the call canceled in flight is booked at its worst case, and the panel says so
        page.wait_for_selector("#task-worst", state="visible")
        canceled = httpx.get(f"{url}/v1/tasks/{page.inner_text('#task-id')}", headers=auth).json()
        assert canceled["worst_case"]["calls"] == 1 and canceled["subtasks"][0]["worst_case"]
        assert f"${canceled['worst_case']['cost_usd']:.6f}" in page.inner_text("#task-worst")
        worst = page.get_attribute('#task-costs g.part[data-part="subtask 0"]', "data-worst")
        assert float(worst or 0) == canceled["subtasks"][0]["worst_case"]["cost_usd"] > 0
        assert "at the worst case" in (page.text_content('#task-costs g.part[data-part="subtask 0"]') or "")

        # the cost table as CSV, built from the rows shown (a download, no request): every task
        # has ended, so once the table shows the ledger's sums it holds still
        tiers = httpx.get(f"{url}/v1/costs", params={"group_by": "tier"}, headers=auth).json()["groups"]
        want = [[g["key"], str(g["calls"]), f"{g['input_tokens']} / {g['output_tokens']}", f"{g['cost_usd']:.6f}"]
                for g in tiers]
        page.wait_for_function("want => JSON.stringify([...document.querySelectorAll('#by-tier tbody tr')]"
                               ".map(tr => [...tr.cells].map(c => c.textContent))) === JSON.stringify(want)", arg=want)
        shown = page.eval_on_selector_all("#by-tier tbody tr", "trs => trs.map(tr => [...tr.cells].map(c => c.textContent))")
        assert shown == want
        with page.expect_download() as got:
            page.click("#csv-tier")
        lines = Path(got.value.path()).read_text().splitlines()
        assert lines[0] == "tier,calls,input_tokens,output_tokens,cost_usd"
        rows = [line.split(",") for line in lines[1:]]
        assert [[key, calls, f"{i} / {o}", cost] for key, calls, i, o, cost in rows[:-1]] == shown
        assert {"planner", "synthesis"} <= {r[0] for r in rows}
        assert rows[-1][0] == "total" and abs(sum(float(r[4]) for r in rows[:-1]) - float(rows[-1][4])) <= 1e-6 * len(rows)

        # an admin sees the cost per user, and can export it
        page.click("#logout")
        page.fill("#token", admin)
        page.click("#login-form button")
        page.wait_for_selector('#by-user tr[data-key="dana"]', state="attached")
        costs = httpx.get(f"{url}/v1/costs", params={"group_by": "user"},
                          headers={"Authorization": f"Bearer {admin}"}).json()
        dana = next(g for g in costs["groups"] if g["key"] == "dana")
        assert page.inner_text('#by-user tr[data-key="dana"] td:nth-of-type(4)') == f"{dana['cost_usd']:.6f}"
        with page.expect_download() as got:
            page.click("#csv-user")
        assert f"dana,{dana['calls']}," in Path(got.value.path()).read_text()
        browser.close()


def test_dashboard_approves_and_denies_held_tool_calls(sim: Simulator, sim_settings: Settings,
                                                       tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("SKIPPED: no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="SKIPPED: playwright is not installed")
    from compound.tools.config import McpServerConfig
    from tests.fixtures.mcp_tools import http_server
    from tests.test_tool_approvals import lines

    count_file = tmp_path / "count"
    with http_server(env={"MCP_TOOLS_COUNT_FILE": str(count_file)}) as tools:
        # neither tool is read-only: under the default policy each call waits for a person
        app = _app(sim_settings, max_replans=0, mcp_servers={"fx": McpServerConfig(url=tools.url)})
        with serving_in_thread(app) as url:
            token = create_token(app.state.store.engine, "dana")[1]
            auth = {"Authorization": f"Bearer {token}"}
            plan = {"subtasks": [
                {"description": "count the incident", "tier_hint": 1, "depends_on": [], "kind": "tool",
                 "tool": "fx.count", "arguments": {}},
                {"description": "delete item b", "tier_hint": 1, "depends_on": [], "kind": "tool",
                 "tool": "fx.delete", "arguments": {"item": "b"}}]}
            task = httpx.post(f"{url}/v1/tasks", headers=auth, json={"prompt": "<b>act</b>", "plan": plan}).json()
            with sync_api.sync_playwright() as pw:
                browser, page = _signed_in(pw, url, token, task["id"])
                # both calls held, each shown with its tool and arguments, before anything ran
                page.wait_for_function("() => document.querySelectorAll('#held-calls .call').length === 2")
                assert page.is_visible("#held")
                held = page.inner_text("#held-calls")
                assert "fx.count" in held and "fx.delete" in held and '{"item":"b"}' in held
                assert lines(count_file) == []
                page.wait_for_selector('#dag g.node[data-index="0"][data-status="awaiting_approval"]', state="attached")
                snap = httpx.get(f"{url}/v1/tasks/{task['id']}", headers=auth).json()
                ids = {c["tool"]: c["id"] for s in snap["subtasks"] for c in s["tool_calls"]}
                page.click(f'#held-calls .call[data-call-id="{ids["fx.count"]}"] .approve-call')
                page.fill(f'#held-calls .call[data-call-id="{ids["fx.delete"]}"] .deny-message', "not <b>b</b>, keep it")
                page.click(f'#held-calls .call[data-call-id="{ids["fx.delete"]}"] .deny-call')
                page.wait_for_function("() => ['completed', 'partial', 'failed'].includes("
                                       "document.querySelector('#task-status').dataset.status)")
                assert page.is_hidden("#held")
                page.click('#dag g.node[data-index="0"]')
                page.wait_for_selector(f'#node-detail li[data-call-id="{ids["fx.count"]}"][data-status="ok"]',
                                       state="attached")
                page.click('#dag g.node[data-index="1"]')
                page.wait_for_selector(f'#node-detail li[data-call-id="{ids["fx.delete"]}"][data-status="denied"]',
                                       state="attached")
                assert "not <b>b</b>, keep it" in page.inner_text("#node-detail")  # as text, never markup
                browser.close()
            ended = httpx.get(f"{url}/v1/tasks/{task['id']}", headers=auth).json()
            calls = {c["tool"]: c for s in ended["subtasks"] for c in s["tool_calls"]}
            assert calls["fx.count"]["status"] == "ok" and calls["fx.count"]["approval"]["decision"] == "approved"
            assert calls["fx.delete"]["status"] == "denied"
            assert calls["fx.delete"]["approval"]["message"] == "not <b>b</b>, keep it"
            assert len(lines(count_file)) == 1  # the approved call ran once

