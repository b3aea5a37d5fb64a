"""The API reference rendered in headless Chromium (Debian's package, driven by
Playwright's Python package; no browser download): /docs (Swagger UI) and /redoc
(ReDoc) list the API's operations from the OpenAPI 3.1 document, with every request
served by the app itself. Skips, saying so, when Chromium or Playwright is missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from compound.api.app import create_app
from compound.core.settings import Settings
from tests.fixtures.fakes import FakeLLM
from tests.fixtures.served import serving_in_thread

if TYPE_CHECKING:  # playwright is optional at run time: the tests skip without it
    from playwright.sync_api import Page, Route

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]  # Chromium on a loaded machine
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # a generous deadline for a state, never a pause
OPERATIONS = [("POST", "/v1/tasks"), ("GET", "/v1/tasks/{task_id}"), ("GET", "/v1/costs"),
              ("POST", "/v1/tasks/{task_id}/cancel")]


@pytest.fixture
def server(sim_settings: Settings) -> Iterator[str]:
    app = create_app(sim_settings.model_copy(update={"executor_process": False}), client=FakeLLM())
    with serving_in_thread(app) as url:
        yield url


@pytest.fixture
def browser_page(server: str) -> Iterator[tuple[Page, list[str]]]:
    """A page, and the URLs of every request it sends to the network (each one passes
    through a route: a request the page's Content-Security-Policy refuses is never sent,
    and one to another host is recorded and refused)."""
    if CHROMIUM is None:
        pytest.skip("SKIPPED: no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="SKIPPED: playwright is not installed")
    sent: list[str] = []

    def route(r: Route) -> None:
        sent.append(r.request.url)
        if r.request.url.startswith(server + "/"):
            r.continue_()
        else:
            r.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)
        page.route("**/*", route)
        yield page, sent
        browser.close()


def _all_local(sent: list[str], url: str) -> None:
    away = [u for u in sent if not u.startswith(url + "/")]
    assert not away, f"requests left 127.0.0.1: {away}"
    assert f"{url}/openapi.json" in sent, "the page never read the API's definition"


def test_swagger_ui_lists_the_operations(server: str, browser_page: tuple[Page, list[str]]) -> None:
    page, sent = browser_page
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock-summary-path", state="attached")
    shown = page.eval_on_selector_all(
        ".opblock", "els => els.map(e => [e.querySelector('.opblock-summary-method').textContent.trim(),"
                    " e.querySelector('.opblock-summary-path').getAttribute('data-path')])")
    for method, path in OPERATIONS:
        assert [method, path] in shown, f"{method} {path} is not listed on /docs"
    assert "Unable to render this definition" not in page.inner_text("body")
    _all_local(sent, server)


def test_redoc_lists_the_operations(server: str, browser_page: tuple[Page, list[str]]) -> None:
    page, sent = browser_page
    page.goto(f"{server}/redoc")
    # ReDoc draws each operation with its method and path in the endpoint box of the right panel
    page.wait_for_selector("[data-section-id^='tag/'], [data-section-id^='operation/']", state="attached")
    # its attribution's logo (an image on its vendor's CDN) has been drawn and, not loaded, taken away
    page.wait_for_selector("a[href='https://redocly.com/redoc/']", state="attached")
    page.wait_for_function("() => !document.querySelector(\"img[alt='redocly logo']\")")
    text = page.inner_text("body")
    for method, path in OPERATIONS:
        assert f"{method.lower()}\n{path}" in text.lower() or f"{method} {path}".lower() in " ".join(
            text.lower().split()), f"{method} {path} is not listed on /redoc"
    _all_local(sent, server)
