"""Prometheus metrics: a registry per app, a CallObserver fed by the executor, and
task counts by status read from the store at scrape time (by the /metrics route)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class MetricsObserver:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("compound_model_calls", "Model calls by model, kind and outcome",
                             ["model", "kind", "status"], registry=registry)
        self.tokens = Counter("compound_tokens", "Tokens by model and direction", ["model", "direction"],
                              registry=registry)
        self.cost = Counter("compound_cost_usd", "Money spent, by model (USD)", ["model"], registry=registry)
        self.latency = Histogram("compound_call_latency_seconds", "Model call latency", ["model"],
                                 registry=registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.in_flight = Gauge("compound_calls_in_flight", "Model calls in flight", registry=registry)

    def call_started(self, *, model: str, kind: str) -> None:  # noqa: ARG002 (the protocol's shape)
        self.in_flight.inc()

    def call_finished(self, *, model: str, kind: str, tier: int | None, status: str, input_tokens: int,  # noqa: ARG002
                      output_tokens: int, cost_usd: float, latency_s: float) -> None:
        self.in_flight.dec()
        self.calls.labels(model, kind, status).inc()
        self.tokens.labels(model, "input").inc(input_tokens)
        self.tokens.labels(model, "output").inc(output_tokens)
        self.cost.labels(model).inc(cost_usd)
        self.latency.labels(model).observe(latency_s)


class TaskCollector(Collector):
    """compound_tasks{status}: the counts the /metrics route read from the store just
    before the scrape (the store's SQL stays in store/)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("compound_tasks", "Tasks by status", labels=["status"])
        for status, n in sorted(self.counts.items()):
            family.add_metric([status], n)
        yield family
