"""Shared CLI helpers: settings with a clear error, an engine, a client for the API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import typer

from compound.core.errors import ConfigError
from compound.core.settings import Settings, load_settings


def settings_or_exit(*, priced: bool = False) -> Settings:
    """Settings, or a clear message and exit 2. With `priced`, every configured model
    must have a known price too (the run commands need it)."""
    try:
        settings = load_settings()
        if priced:
            from compound.llm.pricing import check_prices

            check_models(settings)
            check_prices(settings)
        return settings
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def check_models(settings: Settings) -> None:
    """A configured model litellm does not know (and the config file does not price) is
    reported as unknown, with the closest known names, before any pricing message."""
    import difflib

    from compound.llm.pricing import cost_map

    table: dict[str, Any] = cost_map()
    known = set(table)
    for name, entry in table.items():
        provider = entry.get("litellm_provider") if isinstance(entry, dict) else None
        if provider and "/" not in name:
            known.add(f"{provider}/{name}")
    problems = []
    for model in settings.all_models():
        cfg = settings.model_config_for(model)
        bare = model.split("/", 1)[1] if "/" in model else model
        if model in known or bare in table or cfg.input_cost_per_token is not None:
            continue
        close = difflib.get_close_matches(model, known, n=3, cutoff=0.75)
        where = ", ".join(f for f in ("planner_model", "tier1_models", "tier2_models", "tier3_models")
                          if model in ([getattr(settings, f)] if f == "planner_model" else getattr(settings, f)))
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        problems.append(f"unknown model {model!r} (in {where}){hint}")
    if problems:
        raise ConfigError("; ".join(problems) + " (a model of your own needs input_cost_per_token and "
                          'output_cost_per_token under [models."<name>"] in COMPOUND_CONFIG)')


def engine_for(settings: Settings) -> Any:
    """The store's admin engine, tables created; a clear message and exit 2 when it
    cannot be opened."""
    from compound.core.settings import mask_url
    from compound.store.db import StoreUnavailable, admin_engine

    try:
        return admin_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except StoreUnavailable as exc:
        typer.echo(f"error: cannot open the store at {mask_url(settings.database_url)} "
                   f"(COMPOUND_DATABASE_URL): {exc.message}", err=True)
        raise typer.Exit(2) from None


def api_request(method: str, url: str, path: str, **kw: Any) -> Any:
    """Call a running server with the token from COMPOUND_TOKEN; exit with a clear
    message on a connection error or an error answer."""
    import httpx

    token = os.environ.get("COMPOUND_TOKEN")
    if not token:
        typer.echo("error: set COMPOUND_TOKEN to a token from `compound tokens create`", err=True)
        raise typer.Exit(2)
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"},
                                 timeout=30, **kw)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        typer.echo(f"error: {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return response.json()


def follow_events(url: str, path: str) -> Iterator[dict[str, Any]]:
    """The events of an SSE stream of a running server until it ends (the server
    closes it after the task's terminal event), resuming with Last-Event-ID when the
    connection drops."""
    import json

    import httpx

    token = os.environ.get("COMPOUND_TOKEN", "")
    last: str | None = None
    for _ in range(10):  # reconnects after a dropped connection, then give up
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = last
        try:
            with httpx.stream("GET", url.rstrip("/") + path, headers=headers,
                              timeout=httpx.Timeout(30, read=None)) as response:
                if response.status_code == 204:
                    return
                if response.status_code >= 400:
                    typer.echo(f"error: {response.status_code}: cannot follow the task's events", err=True)
                    raise typer.Exit(1)
                event: dict[str, Any] = {}
                for line in response.iter_lines():
                    if not line:
                        if "data" in event:
                            yield event
                        event = {}
                    elif line.startswith("id:"):
                        last = event["id"] = line[3:].strip()
                    elif line.startswith("event:"):
                        event["event"] = line[6:].strip()
                    elif line.startswith("data:"):
                        event["data"] = json.loads(line[5:].strip())
            return
        except httpx.TransportError:
            if last is None:
                typer.echo(f"error: cannot reach {url}", err=True)
                raise typer.Exit(1) from None
    typer.echo(f"error: lost the event stream of {url} ten times; giving up", err=True)
    raise typer.Exit(1)
