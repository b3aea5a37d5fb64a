"""One table from provider failures to compound's error kinds, for every adapter:
the SDKs' exception classes first, then HTTP statuses; Retry-After parsed; keys scrubbed."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from compound.core.errors import TRANSIENT_STATUSES, ProviderError, ProviderTimeout
from compound.core.logging import redact_text

Kind = Literal["timeout", "transient", "permanent", "status"]

# Statuses that are the caller's fault: retrying cannot help.
PERMANENT_STATUSES = frozenset({400, 401, 402, 403, 404, 413, 422})


def _sdk_classes() -> list[tuple[type[BaseException], Kind]]:
    """(exception class, kind) in match order: subclasses before their bases.
    `status` means "decide by the HTTP status the exception carries". Only the SDKs
    already imported: an exception cannot come from one that is not (and importing
    one here would stall the event loop)."""
    rows: list[tuple[type[BaseException], Kind]] = []
    for name in ("anthropic", "openai"):
        sdk: Any = sys.modules.get(name)
        if sdk is None:
            continue
        rows += [
            (sdk.APITimeoutError, "timeout"),  # our deadline passed: no answer came
            (sdk.APIConnectionError, "transient"),  # refused, reset, DNS: no answer came
            (sdk.APIStatusError, "status"),
            (sdk.APIResponseValidationError, "permanent"),  # a 2xx body of the wrong shape
        ]
    return rows


def transient_status(status: int | None) -> bool:
    """Retry this status? No status (no answer) is transient; so are 408/409/425/429,
    529 and every 5xx; every other 4xx is permanent."""
    if status is None:
        return True
    if status in PERMANENT_STATUSES:
        return False
    return status in TRANSIENT_STATUSES or status >= 500


def kind_of(exc: BaseException) -> Kind:
    for cls, kind in _sdk_classes():
        if isinstance(exc, cls):
            return kind
    return "permanent"  # a bug or an unknown failure: retrying would repeat it


def scrub(text: str, secrets: tuple[str | None, ...]) -> str:
    """The key in use, whatever its shape, and anything shaped like a key, removed."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return redact_text(text)[:500]


def sdk_error(exc: BaseException, model: str, *, secrets: tuple[str | None, ...] = ()) -> ProviderError:
    """Map an anthropic or openai SDK exception to a ProviderError (or ProviderTimeout)."""
    kind = kind_of(exc)
    message = scrub(str(getattr(exc, "message", None) or exc), secrets)
    name = type(exc).__name__
    if kind == "timeout":
        return ProviderTimeout(f"{model}: no answer within the call's timeout ({name})", model=model)
    status = getattr(exc, "status_code", None) if kind == "status" else None
    body = body_text(exc, secrets) or message
    transient = transient_status(status) if kind in ("status", "transient") else False
    return ProviderError(
        f"{model}: {name} ({status or 'no status'}): {message}",
        status=status,
        body=body,
        model=model,
        retry_after_s=retry_after(getattr(getattr(exc, "response", None), "headers", None)),
        transient=transient,
    )


def body_text(exc: BaseException, secrets: tuple[str | None, ...]) -> str | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    try:
        return scrub(str(response.text), secrets)
    except Exception:  # a streamed body not read: the message will do
        return None


def names_response_format(error: ProviderError) -> bool:
    """Is this a refusal of `response_format`? A 400 or 422 with it in the request is
    (some servers do not say why); any other status only when its body names it
    (llama-cpp-python answers json_schema with a 500 naming `response_format`)."""
    if error.status in (400, 422):
        return True
    text = f"{error.body or ''} {error.message}".lower()
    return error.status is not None and ("response_format" in text or "json_schema" in text)


def retry_after(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
