"""The collector's settings for a long-running process (the server, a worker)."""

from __future__ import annotations

import gc

# Collections of the youngest generation after this many net allocations (CPython's
# default is 700; 3.13's, 2,000), and of the older ones after this many of the younger:
# the youngest stay small and quick, a full collection comes after ~20 million.
THRESHOLDS = (2_000, 10, 1_000)


def settle_heap() -> None:
    """Call once start-up is over. A full collection walks every tracked object while
    holding the GIL, stalling every thread: with the start-up heap in it (modules,
    classes, the SDKs' types: ~245,000 objects) one took 100-360 ms under load, and with
    CPython's default thresholds one ran every few seconds while 300 tasks were in
    flight. So: what start-up made is frozen out of the collector's reach (gc.freeze),
    and the thresholds are raised, so a full collection walks only what the service has
    made since and comes rarely (docs/benchmarks.md, "Load"). Reference cycles are still
    collected, by the young generations' passes and the occasional full one."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
