"""The error tree of compound, split by whose fault it is.

    CompoundError
    ├── ConfigError          the operator's settings are wrong (start-up refuses)
    ├── UserInputError       the caller sent something unusable (API: 400/422)
    │   └── PlanInvalid      a plan failed validation; carries every error at once
    ├── NotFound             no such thing, or not yours (API: 404)
    ├── Conflict             the thing is in the wrong state for that (API: 409)
    ├── DatabaseUnavailable  the database went away or cannot be reached (API: 503)
    ├── BudgetExceeded       a call's worst case does not fit in what is left
    ├── ToolError            a tool of an MCP server could not be called (tools/)
    │   ├── UnknownTool      no such tool in the catalogue
    │   ├── ToolUnavailable  its server is down, or the connection dropped mid-call
    │   └── ToolTimedOut     no result within the call's timeout
    └── ProviderError        the provider refused or failed (status, body)
        ├── CallTimedOut     no answer within our own timeout (not a provider's 408)
        ├── FallbackExhausted every model of a fallback chain failed; keeps each error
        ├── ProviderTimeout  no answer within our timeout (not a provider's 408 answer)
        └── NetworkRefused   a real network call was attempted where none is allowed

Only api/ knows HTTP status codes; it maps these in one handler.
"""

from __future__ import annotations

from collections.abc import Sequence

# Statuses a provider returns for a transient condition: retry, then fall back.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class CompoundError(Exception):
    """Base of every error compound raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(CompoundError):
    code = "config_error"


class UserInputError(CompoundError):
    code = "invalid_request"


class PlanInvalid(UserInputError):
    """A plan that does not validate. `errors` lists every problem, in words."""

    code = "plan_invalid"

    def __init__(self, errors: Sequence[str], raw: str | None = None) -> None:
        self.errors = list(errors)
        self.raw = raw
        super().__init__("invalid plan: " + "; ".join(self.errors))


class NotFound(CompoundError):
    code = "not_found"


class Conflict(CompoundError):
    code = "conflict"


class DatabaseUnavailable(CompoundError):
    """The store's database cannot be reached right now (a restart, a lost connection,
    no free connection in time): nothing was decided, the same request may succeed in
    `retry_after_s`. Raised by the store; never carries the URL or the driver's text."""

    code = "database_unavailable"

    def __init__(self, cause: str = "", *, retry_after_s: float = 2.0) -> None:
        why = f" ({cause})" if cause else ""
        super().__init__(f"the database is unavailable{why}; try again in a few seconds")
        self.retry_after_s = retry_after_s


class ExecutorUnavailable(CompoundError):
    """The executor's process stopped while a call waited for it (another is starting)."""

    code = "executor_unavailable"


class BudgetExceeded(CompoundError):
    code = "budget_exceeded"


class ProviderError(CompoundError):
    """A provider call failed. `status` is the HTTP status, or None for a connection
    error or a timeout (both transient)."""

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str | None = None,
        model: str | None = None,
        retry_after_s: float | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.model = model
        self.retry_after_s = retry_after_s
        self.transient = (status is None or status in TRANSIENT_STATUSES) if transient is None else transient


class CallTimedOut(ProviderError):
    """Our own deadline passed with no answer. Unlike a provider's 408 answer, the
    provider may have done (and billed) the work: it is booked at its worst case."""

    code = "call_timed_out"

    def __init__(self, model: str, timeout_s: float) -> None:
        super().__init__(f"{model}: no answer within {timeout_s:g}s (our timeout)", model=model, transient=True)
        self.timeout_s = timeout_s


class FallbackExhausted(ProviderError):
    """Every model of a fallback chain failed. `errors` keeps each model's last
    error, in the order tried; the message names them all."""

    code = "provider_error"

    def __init__(self, errors: Sequence[ProviderError]) -> None:
        self.errors = list(errors)
        last = self.errors[-1]
        named = [e.message if not e.model or e.message.startswith(e.model) else f"{e.model}: {e.message}"
                 for e in self.errors]
        super().__init__("every model failed: " + "; ".join(named), status=last.status, model=last.model,
                         transient=False)


class ProviderTimeout(ProviderError):
    """Our client gave up waiting (no status): transient, and possibly billed."""

    code = "provider_timeout"

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message, model=model, transient=True)


class StreamCut(ProviderError):
    """The connection dropped while the answer was streaming: transient, and possibly
    billed (the provider was writing it), so booked at its worst case like a timeout."""

    code = "stream_cut"

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message, model=model, transient=True)


class NetworkRefused(ProviderError):
    code = "network_refused"

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message, model=model, transient=False)


class ToolError(CompoundError):
    """A tool call that did not happen or did not finish. A tool that ran and failed is
    a result (`is_error`), not one of these."""

    code = "tool_error"

    def __init__(self, message: str, *, tool: str) -> None:
        super().__init__(message)
        self.tool = tool


class UnknownTool(ToolError):
    code = "unknown_tool"


class ToolUnavailable(ToolError):
    code = "tool_unavailable"


class ToolTimedOut(ToolError):
    code = "tool_timeout"

    def __init__(self, message: str, *, tool: str, timeout_s: float) -> None:
        super().__init__(message, tool=tool)
        self.timeout_s = timeout_s
