"""The app factory. Nothing happens at import: settings, the store, the LLM client
and the executor are made in create_app/lifespan and hung on app.state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from compound.api.state import AppState
from compound.core.heap import settle_heap
from compound.core.settings import Settings, load_settings
from compound.executor.host import ExecutorHost
from compound.llm.base import LLMClient
from compound.store import Store
from compound.store.base import RunStore

if TYPE_CHECKING:
    from compound.tools.servers import ToolServers

DESCRIPTION = """compound turns one natural-language request into a DAG of tiered subtasks,
runs it eagerly under a hard budget, and accounts every token and cent.

Every route but `/healthz` (and `/metrics`, unless configured) needs
`Authorization: Bearer <token>`; create tokens with `compound tokens create --user NAME`.
Errors are JSON: `{"error": {"code": "...", "message": "..."}}`."""


def create_app(settings: Settings | None = None, *, client: LLMClient | None = None,
               store: Store | None = None, observers: list[Any] | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _serving(app, settings, client=client, store=store, observers=observers):
            yield

    app = FastAPI(title="compound", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state = AppState()
    app.state.settings = settings
    _offline_docs(app)
    from compound.api.ratelimit import RateLimiter

    app.state.ratelimit = RateLimiter(settings.rate_limit_per_minute)
    _install_routes(app, settings)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _install_routes(app: FastAPI, settings: Settings) -> None:
    """Error shapes and middleware, the task, symbiont and tool routes, the live pages
    and the doors (OpenAI, MCP, A2A)."""
    from compound.api import errors, routes_symbiont, routes_tasks, routes_tools

    errors.install(app)
    app.add_middleware(errors.BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(errors.Options, routes=app.router.routes)
    app.add_middleware(routes_tasks.FastTaskReads)  # outermost of ours: polls skip the rest
    app.include_router(routes_tasks.router)
    app.include_router(routes_symbiont.router)
    app.include_router(routes_tools.router)
    from compound.api.live import install as install_live

    install_live(app)
    from compound.api import doors

    doors.install(app)


@asynccontextmanager
async def _serving(app: FastAPI, settings: Settings, *, client: LLMClient | None, store: Store | None,
                   observers: list[Any] | None) -> AsyncIterator[None]:
    """The app's life: the process configured, the store open, the MCP servers, the
    executor, the token and snapshot caches and the doors started; stopped in turn."""
    _configure_process(settings)
    from compound.store import open_store, store_options

    own_store = store is None
    runs = store or open_store(settings.database_url, **store_options(settings))
    await runs.open()  # creates missing tables
    from compound.tools.servers import ToolServers

    # One session per MCP server, each in a task of its own; a server down is a warning.
    # Started before the executor, whose resumed tasks may call tools at once.
    app.state.tool_servers = tool_servers = ToolServers(settings.mcp_servers)
    await tool_servers.start()
    executor = _executor(app, settings, runs, client=client, observers=observers, tools=tool_servers)
    app.state.store = runs
    app.state.executor = executor
    from compound.api.auth import TokenCache

    tokens = TokenCache(runs, ttl_s=settings.token_cache_s, flush_s=settings.token_last_used_flush_s)
    app.state.tokens = tokens
    flusher = asyncio.create_task(tokens.run(), name="token-last-used")
    _install_snapshots(app, settings, runs)
    await executor.start()
    from compound.api import doors

    try:
        async with doors.running(app):
            settle_heap()  # start-up is over
            yield
    finally:
        await tool_servers.stop()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await tokens.flush()
        await executor.stop()
        if own_store:
            await runs.close()


def _configure_process(settings: Settings) -> None:
    """Secrets, logging, prices and plugins, checked and set up before anything starts."""
    from compound.core import secrets
    from compound.core.logging import configure_logging
    from compound.llm.pricing import check_prices

    secrets.configure(settings)  # every key and credential the settings and environment hold
    configure_logging(settings.log_level, settings.log_json)
    check_prices(settings)
    from compound.plugins import load_plugins

    load_plugins(settings.plugins)  # COMPOUND_PLUGINS: a broken one refuses the start
    from compound.core.logging import get_logger

    for model, key in settings.models_without_access():
        get_logger("compound.api").warning(
            "model has no provider key and no base URL; its calls will fail", model=model, set=key)


def _executor(app: FastAPI, settings: Settings, runs: RunStore, *, client: LLMClient | None,
              observers: list[Any] | None, tools: ToolServers) -> ExecutorHost:
    """Where tasks run: queue workers, a process of its own, or this loop."""
    from compound.executor.service import Executor

    if settings.execution == "queue":
        # Queue mode: this process stores, enqueues and reads; `compound worker`s run tasks.
        from compound.worker.backend import QueueBackend

        return QueueBackend(settings=settings, store=runs)
    obs = list(observers or [])
    metrics = getattr(app.state, "metrics", None)
    if metrics is not None:
        obs.append(metrics)
    # The synthesis call streams while a door's client listens, so it gets the answer as written.
    if client is None and settings.executor_process and not runs.in_memory:
        from compound.executor.process import ProcessExecutor

        # The executor and its SDK clients run in a process of their own, so the
        # HTTP loop stays quick however busy they are (executor/process.py).
        return ProcessExecutor(settings=settings, store=runs, observers=obs, stream_answers=True)
    from compound.llm import build_client

    # On this loop: an in-memory store (no other process can open it), an
    # injected client (tests), or COMPOUND_EXECUTOR_PROCESS=false.
    return Executor(settings=settings, store=runs, client=client or build_client(settings),
                    observers=obs, stream_answers=True, owns_client=client is None, tools=tools)


def _install_snapshots(app: FastAPI, settings: Settings, runs: RunStore) -> None:
    """The cache of task snapshots the reads and streams are served from."""
    from compound.api.snapshots import SnapshotCache

    # Tasks run by other processes are heard by PostgreSQL's LISTEN/NOTIFY only.
    hears_all = runs.url.startswith("postgres") or getattr(settings, "execution", "inline") != "queue"
    app.state.snapshots = SnapshotCache(runs, keep=hears_all)
    if settings.execution == "queue":  # a queued task says when no worker is alive to take it
        from compound.api.notices import NoticedSnapshots
        from compound.worker.liveness import WorkerWatch

        app.state.snapshots = NoticedSnapshots(runs, watch=WorkerWatch(settings.database_url), keep=hears_all)


def _offline_docs(app: FastAPI) -> None:
    """The API reference with no CDN (it works offline): Swagger UI 5 at /docs and ReDoc
    at /redoc, both rendering FastAPI's OpenAPI 3.1, from the assets the fastapi-offline
    package ships (served at /docs-assets/)."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    # Nothing on these pages may leave the server: ReDoc draws a logo from its vendor's
    # CDN, and Swagger UI asks an online validator for a badge unless told not to.
    local_only = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                             "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                             "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="compound API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})
        page.headers.update(local_only)
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url="/openapi.json", title="compound API",
                              redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)
        page.headers.update(local_only)
        return page
