"""Where a model's calls go: its provider, the adapter that serves it, its base URL,
its key, and the offline guard. The same rules for every adapter."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

from compound.core.errors import NetworkRefused, ProviderError
from compound.core.settings import Settings

AdapterName = Literal["anthropic", "openai", "litellm"]

BASE_ENV = {
    "anthropic": ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"),
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
}
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
PUBLIC_BASE = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
LOOPBACK_DUMMY_KEY = "sim"  # a local server needs no key; the SDKs insist on one
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def provider_of(model: str) -> str:
    """`anthropic/claude-...` -> anthropic; an unprefixed known name (`claude-haiku-4-5`)
    -> the provider litellm's map gives it; anything else -> openai (litellm's default)."""
    if "/" in model:
        return model.split("/", 1)[0]
    from compound.llm.pricing import cost_map

    entry = cost_map().get(model) or {}
    return str(entry.get("litellm_provider") or "openai")


def adapter_of(model: str, settings: Settings) -> AdapterName:
    """The SDK adapter for anthropic and openai models (and OpenAI-compatible servers
    behind `openai/...`); litellm for every other provider; the config may force one."""
    forced = settings.model_config_for(model).adapter
    if forced is not None:
        return forced
    provider = provider_of(model)
    if provider == "anthropic":
        return "anthropic"
    if provider == "openai":
        return "openai"
    return "litellm"


def remote_allowed() -> bool:
    return os.environ.get("COMPOUND_ALLOW_REMOTE_MODELS", "true").lower() not in ("0", "false", "no")


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


def api_base(model: str, settings: Settings) -> str | None:
    """The per-model `api_base`, else the provider's variables, else None (public)."""
    configured = settings.model_config_for(model).api_base
    if configured:
        return configured
    for name in BASE_ENV.get(provider_of(model), ()):
        if os.environ.get(name):
            return os.environ[name]
    return None


def api_key(model: str, settings: Settings, base: str | None) -> str | None:
    provider = provider_of(model)
    secret = {"anthropic": settings.anthropic_api_key, "openai": settings.openai_api_key}.get(provider)
    if secret is not None:
        return secret.get_secret_value()
    if base and is_loopback(base):
        return LOOPBACK_DUMMY_KEY
    return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model's destination, resolved once."""

    model: str  # as configured, e.g. anthropic/claude-haiku-4-5
    name: str  # as the provider knows it, e.g. claude-haiku-4-5
    provider: str
    base: str | None  # None: the provider's public endpoint
    key: str | None

    @property
    def loopback(self) -> bool:
        return bool(self.base) and is_loopback(self.base or "")

    def check(self) -> None:
        """Refuse before sending: the offline guard, then a missing key."""
        if not self.loopback and not remote_allowed():
            raise NetworkRefused(
                f"refusing a network call to {self.model} at {self.base or 'its public endpoint'}: "
                "COMPOUND_ALLOW_REMOTE_MODELS is false",
                model=self.model,
            )
        if self.key is None and self.provider in KEY_ENV:
            raise ProviderError(
                f"no API key for {self.model}: set {KEY_ENV[self.provider]} (or point the provider's "
                "base URL at a local server)", status=401, model=self.model, transient=False)


def endpoint(model: str, settings: Settings) -> Endpoint:
    base = api_base(model, settings)
    provider = provider_of(model)
    name = model.split("/", 1)[1] if model.startswith(f"{provider}/") else model
    return Endpoint(model=model, name=name, provider=provider, base=base, key=api_key(model, settings, base))
