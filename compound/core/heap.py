"""The collector's settings for a long-running process (the server, a worker)."""

from __future__ import annotations

import gc

# Collections of the youngest generation after this many net allocations (CPython's
# default is 700), and of the older ones after this many of the younger.
THRESHOLDS = (10_000, 20, 20)


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
