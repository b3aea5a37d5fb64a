"""The dashboard end to end in headless Chromium (Debian's package, driven by
Playwright's Python package; no browser download). Skips, saying so, when either is
missing. COMPOUND_SCREENSHOT=path saves a screenshot."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compound.api.app import create_app
from compound.core.settings import Settings
from compound.llm.litellm_client import LiteLLMClient
from compound.llm.simulator import Simulator, free_port
from compound.store.users import create_token

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(sim: Simulator, sim_settings: Settings) -> Iterator[tuple[str, str]]:
    import uvicorn

    sim.script.latency_rules = [("slow", 1.2)]
    app = create_app(sim_settings, client=LiteLLMClient(sim_settings))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    token = create_token(app.state.store.engine, "dana")[1]
    yield f"http://127.0.0.1:{port}", token
    srv.should_exit = True
    thread.join(timeout=10)


def test_dashboard_shows_costs_and_live_task(server: tuple[str, str]) -> None:
    if CHROMIUM is None:
        pytest.skip("SKIPPED: no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="SKIPPED: playwright is not installed")
    url, token = server
    auth = {"Authorization": f"Bearer {token}"}
    first = httpx.post(f"{url}/v1/tasks", headers=auth, json={"prompt": "warm up and check"}).json()
    for _ in range(200):
        if httpx.get(f"{url}/v1/tasks/{first['id']}", headers=auth).json()["status"] == "completed":
            break
        time.sleep(0.05)
    plan = {"subtasks": [{"description": "slow step one", "tier_hint": 1, "depends_on": []},
                         {"description": "slow step two", "tier_hint": 2, "depends_on": [0]}]}
    # Held for approval until the dashboard shows it (approved below): the live view is
    # seen before the task runs, however slow the browser is to start.
    running = httpx.post(f"{url}/v1/tasks", headers=auth,
                         json={"prompt": "watch me", "plan": plan, "approve": False}).json()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{url}/dashboard")
        page.fill("#token", token)
        page.click("#login-form button")
        page.wait_for_selector("#cost-chart rect.day", state="attached")
        spent_days = page.eval_on_selector_all("#cost-chart rect.day", "els => els.filter(e => +e.dataset.cost > 0).length")
        assert spent_days >= 1
        page.wait_for_selector(f'#recent tr[data-task-id="{first["id"]}"]')
        assert "claude-haiku-4-5" in page.inner_text("#by-model")
        page.click(f'#recent tr[data-task-id="{running["id"]}"]')
        page.wait_for_selector('#dag g.node[data-index="0"]', state="attached")
        first_status = page.get_attribute('#dag g.node[data-index="1"]', "data-status")
        assert first_status in ("pending", "running")
        assert httpx.post(f"{url}/v1/tasks/{running['id']}/approve", headers=auth).status_code == 200
        page.wait_for_selector('#dag g.node[data-index="1"][data-status="completed"]', state="attached", timeout=20000)
        page.wait_for_selector('#task-status[data-status="completed"]', state="attached", timeout=20000)
        page.click('#dag g.node[data-index="1"]')
        assert "Result of subtask: slow step two" in page.inner_text("#node-result")
        shot = os.environ.get("COMPOUND_SCREENSHOT")
        if shot:
            page.screenshot(path=str(Path(shot)), full_page=True)
        browser.close()
