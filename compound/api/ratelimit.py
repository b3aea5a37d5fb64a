"""A per-token sliding-window limit on submissions, in memory (one process)."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque


class RateLimiter:
    def __init__(self, per_minute: int, *, clock: callable[[], float] | None = None) -> None:  # type: ignore[valid-type]
        self.per_minute = per_minute
        self.clock = clock or time.monotonic
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, key: str) -> float | None:
        """Record a hit; None when allowed, else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        hits = self._hits[key]
        while hits and now - hits[0] >= 60.0:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return max(1.0, math.ceil(60.0 - (now - hits[0])))
        hits.append(now)
        return None
