"""structlog set-up: every line on stderr; JSON lines from INFO up when stderr is not a
terminal (a service, CI), readable lines from WARNING up on a terminal unless asked
(`compound -v`, or an explicit COMPOUND_LOG_LEVEL); and a processor that redacts
provider keys and bearer tokens wherever they appear in an event."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from compound.core.secrets import REDACTED, redact

redact_text = redact  # the one redaction function (compound.core.secrets), by its older name
_SECRET_KEYS = re.compile(r"(?i)(api[_-]?key|authorization|token|secret|password)")


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        if key and _SECRET_KEYS.search(key) and not key.endswith(("_id", "_count")):
            return REDACTED
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, key) for v in value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_text(repr(value))  # an exception, a URL object ...: as the renderer would show it


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask every configured secret and anything that looks like a
    key or a token (compound.core.secrets)."""
    for key in list(event_dict):
        if key == "exc_info":  # format_exc_info, before this, turns it into `exception` text
            continue
        event_dict[key] = _redact(event_dict[key], key if key != "event" else "")
    return event_dict


class _Stderr:
    """Whatever sys.stderr is when a line is written (a CLI runner swaps it per call)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_verbose = False


def set_verbose(on: bool) -> None:
    """`compound -v`: INFO lines on a terminal too (an explicit level still wins)."""
    global _verbose
    _verbose = on


def effective_level(level: str | None) -> str:
    """The level in effect: an explicit one as given; else INFO when stderr is not a
    terminal (operators lose nothing) or when asked (-v), WARNING on a terminal."""
    if level:
        return level.upper()
    return "INFO" if _verbose or not sys.stderr.isatty() else "WARNING"


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    level = effective_level(level)
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
