"""The litellm adapter: one `acompletion` call per `complete()`, usage and cost out,
provider errors mapped to ProviderError. Base URLs: a per-model `api_base` from the
config, else the providers' own variables, else the provider's public endpoint."""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("DISABLE_AIOHTTP_TRANSPORT", "True")

from compound.core.errors import TRANSIENT_STATUSES, NetworkRefused, ProviderError
from compound.core.logging import redact_text
from compound.core.settings import Settings
from compound.llm.base import Completion, Message, Price, Usage
from compound.llm.pricing import price_of

_BASE_ENV = {
    "anthropic": ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"),
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
}
_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 413, 422})


def provider_of(model: str) -> str:
    """`anthropic/claude-...` -> anthropic; an unprefixed known name (`claude-haiku-4-5`)
    -> the provider litellm's map gives it; anything else -> openai (litellm's default)."""
    if "/" in model:
        return model.split("/", 1)[0]
    import litellm

    entry = litellm.model_cost.get(model) or {}
    return str(entry.get("litellm_provider") or "openai")


def remote_allowed() -> bool:
    return os.environ.get("COMPOUND_ALLOW_REMOTE_MODELS", "true").lower() not in ("0", "false", "no")


class LiteLLMClient:
    """LLMClient over litellm. One provider call per `complete()`; no retries inside."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._prices: dict[str, Price] = {}

    def api_base(self, model: str) -> str | None:
        configured = self.settings.model_config_for(model).api_base
        if configured:
            return configured
        for name in _BASE_ENV.get(provider_of(model), ()):
            if os.environ.get(name):
                return os.environ[name]
        return None

    def _api_key(self, model: str, base: str | None) -> str | None:
        provider = provider_of(model)
        secret = {"anthropic": self.settings.anthropic_api_key,
                  "openai": self.settings.openai_api_key}.get(provider)
        if secret is not None:
            return secret.get_secret_value()
        if base and _is_loopback(base):
            return "sim"  # a local server needs no key; litellm insists on one
        return None

    def price(self, model: str) -> Price:
        if model not in self._prices:
            self._prices[model] = price_of(model, self.settings)
        return self._prices[model]

    async def warm(self) -> None:
        import litellm  # noqa: F401  (the import costs seconds; pay it at start)

    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        import litellm

        litellm.suppress_debug_info = True
        base = self.api_base(model)
        if not remote_allowed() and not (base and _is_loopback(base)):
            raise NetworkRefused(
                f"refusing a network call to {model} at {base or 'its public endpoint'}: "
                "COMPOUND_ALLOW_REMOTE_MODELS is false",
                model=model,
            )
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "timeout": timeout_s or self.settings.call_timeout_s,
            "num_retries": 0,
        }
        if base:
            kwargs["api_base"] = base
        key = self._api_key(model, base)
        if key:
            kwargs["api_key"] = key
        elif provider_of(model) in _KEY_ENV:
            name = _KEY_ENV[provider_of(model)]
            raise ProviderError(f"no API key for {model}: set {name} (or point the provider's base URL "
                                "at a local server)", status=401, model=model, transient=False)
        if json_schema is not None and provider_of(model) == "openai":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "plan", "schema": json_schema},
            }
        started = time.perf_counter()
        try:
            response = await litellm.acompletion(**kwargs)
        except Exception as exc:  # litellm raises its own tree; map it once, here
            error = to_provider_error(exc, model, secrets=(key,))
            if "response_format" not in kwargs or error.status != 400:
                raise error from None
            # Some OpenAI-compatible servers refuse json_schema output: ask again without
            # it (the prompt describes the JSON anyway). A 400 is not billed.
            del kwargs["response_format"]
            try:
                response = await litellm.acompletion(**kwargs)
            except Exception as exc2:
                raise to_provider_error(exc2, model, secrets=(key,)) from None
        latency = time.perf_counter() - started
        usage = usage_of(response)
        choice = response.choices[0]
        text = choice.message.content or ""
        return Completion(
            text=text,
            model=model,
            usage=usage,
            cost_usd=self.price(model).cost(usage),
            latency_s=latency,
            finish_reason=getattr(choice, "finish_reason", None),
        )


def usage_of(response: Any) -> Usage:
    """Tokens as the provider reported them, split so input excludes cache tokens."""
    u = getattr(response, "usage", None)
    if u is None:
        return Usage()
    prompt = int(getattr(u, "prompt_tokens", 0) or 0)
    output = int(getattr(u, "completion_tokens", 0) or 0)
    cache_read = int(getattr(u, "cache_read_input_tokens", 0) or 0)
    cache_write = int(getattr(u, "cache_creation_input_tokens", 0) or 0)
    details = getattr(u, "prompt_tokens_details", None)
    if not cache_read and details is not None:
        cache_read = int(getattr(details, "cached_tokens", 0) or 0)
    # litellm reports prompt_tokens including cache reads and writes for both wires.
    inp = max(0, prompt - cache_read - cache_write)
    return Usage(input_tokens=inp, output_tokens=output, cache_read_tokens=cache_read,
                 cache_write_tokens=cache_write)


def to_provider_error(exc: BaseException, model: str, *, secrets: tuple[str | None, ...] = ()) -> ProviderError:
    from litellm.exceptions import APIConnectionError, Timeout

    status = getattr(exc, "status_code", None)
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    response = getattr(exc, "response", None)
    real = getattr(response, "status_code", None)
    if "overloaded_error" in str(exc):
        status = 529  # litellm folds Anthropic's 529 into 500
    elif isinstance(real, int) and real >= 400:
        status = real
    timeout = isinstance(exc, Timeout) or "timeout" in type(exc).__name__.lower()
    connection = isinstance(exc, APIConnectionError) and status in (None, 500)
    if timeout:
        status = status if status not in (None, 500) else 408
    transient = timeout or connection or status is None or status in TRANSIENT_STATUSES or (
        status >= 500 if status else False
    )
    if status in PERMANENT_STATUSES:
        transient = False
    message = str(getattr(exc, "message", None) or exc)
    for secret in secrets:  # the key in use, whatever its shape, never leaves in an error
        if secret and len(secret) >= 4:
            message = message.replace(secret, "[redacted]")
    message = redact_text(message)[:500]
    return ProviderError(
        f"{model}: {type(exc).__name__} ({status or 'no status'}): {message}",
        status=status,
        body=message,
        model=model,
        retry_after_s=_retry_after(exc),
        transient=transient,
    )


def _retry_after(exc: BaseException) -> float | None:
    headers: Any = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        headers = getattr(exc, "litellm_response_headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in _LOOPBACK or host.startswith("127.")
