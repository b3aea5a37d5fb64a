"""Every use compound makes of DBOS's private API, in one place.

DBOS has no public equivalent for either of these, so compound pins DBOS to the
release range it was checked against (pyproject.toml: `dbos>=3.4,<3.5`), and
tests/test_dbos_private.py checks that each name below still exists with the
signature used here: an upgrade that changes one fails there, not in a worker.

- `DBOS._recover_pending_workflows(executor_ids)` (dbos/_dbos.py, which calls
  `recover_pending_workflows` in dbos/_recovery.py): puts every workflow still PENDING
  on one of the given executors back in its queue, each only while it is still
  PENDING on one of them (two workers handing back the same dead worker's tasks do not
  both re-enqueue one), and returns their handles. DBOS runs it itself only at launch,
  for its own executor id. A worker runs it for its own id after losing the database
  (its tasks may have gone on elsewhere meanwhile) and for the ids of dead workers
  (worker/runner.py). The public `DBOS.resume_workflow(s)` is not the same: it
  re-enqueues a workflow whatever executor holds it, resets its recovery attempts and
  drops its deduplication id.
- `dbos._queue.queue_worker_thread(stop_event, dbos, queue)`: the function each
  queue's thread runs, looked up in its module each time DBOS starts one. It sleeps
  `polling_interval_sec` between polls on `stop_event.wait(timeout)`, and DBOS has no
  way to end that sleep early; worker/wake.py wraps the function so that a queue's
  thread waits on a doorbell compound can ring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The parameters each private function is called with (tests/test_dbos_private.py).
RECOVER_PARAMETERS = ["executor_ids"]
QUEUE_THREAD_PARAMETERS = ["stop_event", "dbos", "queue"]


def recover_pending_workflows(executor_ids: list[str]) -> list[Any]:
    """(Blocking) Put the PENDING workflows of `executor_ids` back in their queue;
    their handles."""
    from dbos import DBOS

    return list(DBOS._recover_pending_workflows(executor_ids))


def queue_thread() -> Callable[..., Any]:
    """The function DBOS runs in each queue's thread (as installed now)."""
    from dbos import _queue

    return _queue.queue_worker_thread


def set_queue_thread(function: Callable[..., Any]) -> None:
    """Make DBOS run `function` in each queue thread it starts from now on."""
    from dbos import _queue

    _queue.queue_worker_thread = function
