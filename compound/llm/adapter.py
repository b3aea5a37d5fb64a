"""What the two SDK adapters share: one SDK client per base URL and key, made at start
with its connection pool sized to COMPOUND_MAX_CONCURRENCY, endpoints and prices per model."""

from __future__ import annotations

import os
from typing import Any, Generic, Literal, TypeVar

from compound.core.settings import Settings
from compound.llm.base import Price
from compound.llm.endpoints import PUBLIC_BASE, Endpoint, endpoint
from compound.llm.pricing import price_of

C = TypeVar("C")

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def http_transport(settings: Settings) -> Literal["aiohttp", "httpx"]:
    """The SDKs' HTTP stack: `auto` is aiohttp (the SDKs' `DefaultAioHttpClient`, about
    half the CPU per call of their httpx default under concurrency: docs/benchmarks.md)
    unless a proxy variable is set, which only the httpx stack reads."""
    if settings.http_transport != "auto":
        return settings.http_transport
    return "httpx" if any(os.environ.get(name) for name in PROXY_VARIABLES) else "aiohttp"


class SDKAdapter(Generic[C]):
    provider = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[tuple[str, str], C] = {}
        self._endpoints: dict[str, tuple[Endpoint, C | None]] = {}
        self._prices: dict[str, Price] = {}

    def _make(self, base: str, key: str) -> C:  # pragma: no cover - each adapter builds its own
        raise NotImplementedError

    def prepare(self, model: str) -> tuple[Endpoint, C | None]:
        """Resolve a model once: its endpoint and the SDK client for its base URL and key
        (None when it has no key: the call then fails with a clear error)."""
        got = self._endpoints.get(model)
        if got is None:
            ep = endpoint(model, self.settings)
            client = None
            if ep.key is not None:
                base = ep.base or PUBLIC_BASE[self.provider]
                client = self._clients.get((base, ep.key))
                if client is None:
                    client = self._clients[(base, ep.key)] = self._make(base, ep.key)
            got = self._endpoints[model] = (ep, client)
        return got

    def client_for(self, model: str) -> tuple[Endpoint, C]:
        ep, client = self.prepare(model)
        ep.check()
        assert client is not None  # check() refused a model without a key
        return ep, client

    def price(self, model: str) -> Price:
        price = self._prices.get(model)
        if price is None:
            price = self._prices[model] = price_of(model, self.settings)
        return price

    def http_client(self, sdk: Any, limits_type: Any) -> Any:
        """The SDK's own HTTP client (its defaults, its HTTP stack: anthropic rides on
        httpx2, openai on httpx), on the transport `http_transport` picks, its pool sized to
        COMPOUND_MAX_CONCURRENCY."""
        n = self.settings.max_concurrency
        limits = limits_type(max_connections=n, max_keepalive_connections=n)
        if http_transport(self.settings) == "aiohttp":
            return sdk.DefaultAioHttpClient(limits=limits)
        return sdk.DefaultAsyncHttpxClient(limits=limits)

    async def warm(self) -> None:
        """Nothing to pay ahead: each model's SDK client is made when the model is first routed here."""

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()  # type: ignore[attr-defined]
        self._clients.clear()
        self._endpoints.clear()

