"""Shared CLI helpers: settings with a clear error, an engine, a client for the API."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

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
            from compound.plugins import load_plugins

            load_plugins(settings.plugins)  # a plugin named but missing or broken refuses the start
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

    require_extras_or_exit(settings)
    try:
        return admin_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except StoreUnavailable as exc:
        typer.echo(f"error: cannot open the store at {mask_url(settings.database_url)} "
                   f"(COMPOUND_DATABASE_URL): {exc.message}", err=True)
        raise typer.Exit(2) from None


DEFAULT_URL = "http://127.0.0.1:8000"


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def token_from_env() -> str:
    """COMPOUND_TOKEN without surrounding whitespace (a newline pasted or read from a file
    with it is never part of a token); a clear error, without the value, if it is unset
    or holds what no token holds."""
    token = os.environ.get("COMPOUND_TOKEN", "").strip()
    if not token:
        fail("set COMPOUND_TOKEN to a token from `compound tokens create`")
    for at, char in enumerate(token, 1):
        if not 33 <= ord(char) <= 126:
            what = "a space" if char.isspace() else "a control character" if ord(char) < 32 else "not ASCII"
            fail(f"COMPOUND_TOKEN is malformed: its character {at} of {len(token)} is {what}, which no token "
                 "holds; set it to the token `compound tokens create` printed")
    return token


def unreachable(url: str, exc: Exception) -> NoReturn:
    """Exit 1 naming the URL tried, where it came from and how to point elsewhere."""
    import httpx

    if url == os.environ.get("COMPOUND_URL"):
        source = "from COMPOUND_URL"
    elif url == DEFAULT_URL:
        source = "the default"
    else:
        source = "from --url"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        why = "it is not an http:// or https:// URL"
    else:
        why = f"{type(exc).__name__} (is `compound serve` running there?)"
    fail(f"cannot reach the server at {url} ({source}): {why}. Set the server's URL with --url URL or "
         "COMPOUND_URL=URL", 1)


def api_request(method: str, url: str, path: str, **kw: Any) -> Any:
    """Call a running server with the token from COMPOUND_TOKEN; exit with a clear
    message on a connection error or an error answer."""
    import httpx

    token = token_from_env()
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"},
                                 timeout=30, **kw)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        unreachable(url, exc)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        fail(f"{response.status_code}: {message}", 1)
    return response.json()


def read_prompt(request: str | None, file: Path | None, settings_limit: int | None = None) -> str:
    """The prompt: the argument, stdin when it is `-`, or the file of --file (`-` too);
    exactly one of them. With `settings_limit`, longer prompts are refused as the server
    refuses them (COMPOUND_MAX_PROMPT_CHARS)."""
    if request is not None and file is not None:
        fail("give the request as an argument or with --file, not both")
    if request is None and file is None:
        fail("give the request as an argument, `-` to read it from stdin, or --file PATH")
    source = "stdin" if request == "-" or str(file) == "-" else str(file) if file is not None else None
    if source == "stdin":
        if sys.stdin.isatty():
            typer.echo("reading the request from stdin (end it with Ctrl-D)", err=True)
        text = sys.stdin.read().strip()
    elif file is not None:
        try:
            text = file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            fail(f"cannot read the request from {file}: it is not UTF-8 text")
        except OSError as exc:
            fail(f"cannot read the request from {file}: {exc.strerror or exc}")
    else:
        text = str(request)
    if not text.strip():
        fail(f"the request from {source} is empty" if source else "the request is empty")
    if settings_limit is not None:
        check_prompt_length(text, settings_limit)
    return text


def check_prompt_length(text: str, limit: int) -> None:
    """Refuse a prompt the server would refuse, with the same limit and its setting."""
    if len(text) > limit:
        fail(f"the request has {len(text)} characters; at most {limit} are accepted "
             "(COMPOUND_MAX_PROMPT_CHARS)")


def require_extras_or_exit(settings: Settings, *, queue: bool = False) -> None:
    """The optional extras the settings need, checked before any work starts: the
    PostgreSQL driver for a postgresql:// store, DBOS for queue mode (`queue`)."""
    from compound.core.extras import require

    try:
        if settings.database_url.startswith("postgresql"):
            require("postgres", needed_by="COMPOUND_DATABASE_URL=postgresql://...")
        if queue and settings.execution == "queue":
            require("dbos", needed_by="COMPOUND_EXECUTION=queue")
    except ConfigError as exc:
        fail(exc.message)


def follow_events(url: str, path: str) -> Iterator[dict[str, Any]]:
    """The events of an SSE stream of a running server until it ends (the server
    closes it after the task's terminal event), resuming with Last-Event-ID when the
    connection drops."""
    import json

    import httpx

    token = token_from_env()
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
        except httpx.TransportError as exc:
            if last is None:
                unreachable(url, exc)
    typer.echo(f"error: lost the event stream of {url} ten times; giving up", err=True)
    raise typer.Exit(1)
