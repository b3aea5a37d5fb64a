"""Observers of model calls (metrics, live displays). The executor calls them after
the store has been written; an observer must be cheap and must not raise."""

from __future__ import annotations

from typing import Protocol


class CallObserver(Protocol):
    def call_started(self, *, model: str, kind: str) -> None: ...

    def call_finished(
        self,
        *,
        model: str,
        kind: str,
        tier: int | None,
        status: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
        latency_s: float,
    ) -> None: ...
