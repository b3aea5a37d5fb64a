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

            check_prices(settings)
        return settings
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def engine_for(settings: Settings) -> Any:
    """The store's admin engine, tables created; a clear message and exit 2 when it
    cannot be opened."""
    from compound.core.settings import mask_url
    from compound.store.db import StoreUnavailable, admin_engine

    try:
        return admin_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
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
