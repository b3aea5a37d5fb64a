"""One table from provider failures to compound's error kinds, for every adapter:
the SDKs' exception classes first, then HTTP statuses; Retry-After parsed; keys scrubbed."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from compound.core.errors import TRANSIENT_STATUSES, ProviderError, ProviderTimeout, StreamCut
from compound.core.secrets import redact

Kind = Literal["timeout", "transient", "permanent", "status", "stream", "cut"]

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
            (sdk.APIError, "stream"),  # an error event in a streamed answer (openai's)
        ]
    # A streamed answer's body is read after the SDK's request returned: a connection
    # dropped or stalled midway comes as the HTTP stack's own exception.
    for name in ("httpx", "httpx2"):
        stack: Any = sys.modules.get(name)
        if stack is not None:
            rows += [(stack.TimeoutException, "timeout"), (stack.TransportError, "cut")]
    aiohttp: Any = sys.modules.get("aiohttp")
    if aiohttp is not None:
        rows += [(aiohttp.ServerTimeoutError, "timeout"), (aiohttp.ClientError, "cut")]
    return rows


# Anthropic's error types, as the statuses they stand for (an `error` event in a
# stream comes after the answer's 200: its type says what went wrong).
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
    # OpenAI's (and OpenAI-compatible servers') words for the same
    "server_error": 500, "rate_limit_exceeded": 429, "insufficient_quota": 429, "context_length_exceeded": 400,
    "invalid_api_key": 401,
}


def stream_error_status(body: Any) -> int:
    """The status a streamed answer's error event stands for, from its body: Anthropic's
    `{"type": "error", "error": {"type": ...}}`, OpenAI's `{"message", "type", "code"}`
    (the code may be a status). A failure the body does not name is the server's (500:
    it accepted the call, then could not finish it)."""
    error = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(error, dict):
        return 500
    code = error.get("code")
    if (isinstance(code, int) or (isinstance(code, str) and code.isdigit())) and 400 <= int(code) < 600:
        return int(code)
    for word in (error.get("type"), code):
        if isinstance(word, str) and word in ERROR_TYPE_STATUS:
            return ERROR_TYPE_STATUS[word]
    return 500


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
    """The key in use and every configured secret, whatever their shape, and anything
    shaped like a key, removed (compound.core.secrets); then cut to 500 characters."""
    return redact(text, secrets)[:500]


def sdk_error(exc: BaseException, model: str, *, secrets: tuple[str | None, ...] = (),
              midstream: bool = False) -> ProviderError:
    """Map an anthropic or openai SDK exception to a ProviderError (or ProviderTimeout).
    `midstream`: the answer's 200 had come and its body was being read, so a lost
    connection is a StreamCut whatever the SDK calls it (the HTTP stack's own exception,
    or the SDK's APIConnectionError wrapping it)."""
    kind = kind_of(exc)
    if midstream and kind == "transient":
        kind = "cut"
    message = scrub(str(getattr(exc, "message", None) or exc), secrets)
    name = type(exc).__name__
    if kind == "timeout":
        return ProviderTimeout(f"{model}: no answer within the call's timeout ({name})", model=model)
    if kind == "cut":
        return StreamCut(f"{model}: the connection dropped while the answer streamed ({name}): {message}",
                         model=model)
    status = getattr(exc, "status_code", None) if kind == "status" else None
    if kind == "stream" or (status is not None and status < 300):  # an error event after the 200
        status, kind = stream_error_status(getattr(exc, "body", None)), "status"
        name = f"{name} in the stream"
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


def stream_error(data: str, model: str, *, secrets: tuple[str | None, ...] = ()) -> ProviderError:
    """The ProviderError of an `error` event in a streamed answer (its data, JSON or
    not), read from the raw events: the status its body stands for decides whether it
    is transient, as for an error answer."""
    try:
        body: Any = json.loads(data)
    except ValueError:
        body = data
    status = stream_error_status(body)
    shown = scrub(str(data), secrets)
    return ProviderError(f"{model}: an error event in the stream ({status}): {shown}", status=status, body=shown,
                         model=model, transient=transient_status(status))


def body_text(exc: BaseException, secrets: tuple[str | None, ...]) -> str | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    try:
        return scrub(str(response.text), secrets)
    except Exception:  # a streamed body not read: the message will do
        return None


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
