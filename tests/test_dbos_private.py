"""The private DBOS API compound uses (compound/worker/dbos_private.py) is still there,
with the signatures compound calls it with, in the installed DBOS; and pyproject.toml
pins DBOS to the release range it was checked against."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

from dbos import DBOS, _queue

from compound.worker import dbos_private

ROOT = Path(__file__).resolve().parents[1]


def test_recover_pending_workflows_takes_executor_ids() -> None:
    recover = DBOS._recover_pending_workflows
    assert inspect.ismethod(recover) and recover.__self__ is DBOS  # a classmethod: callable without an instance
    params = list(inspect.signature(recover).parameters)
    assert params == dbos_private.RECOVER_PARAMETERS


def test_queue_thread_takes_stop_event_dbos_queue() -> None:
    function = dbos_private.queue_thread()
    original = getattr(function, "__compound_original__", function)  # another test may have hooked it
    assert original.__module__ == _queue.__name__ and original.__name__ == "queue_worker_thread"
    assert list(inspect.signature(original).parameters) == dbos_private.QUEUE_THREAD_PARAMETERS


def test_queue_thread_is_looked_up_in_its_module_when_a_thread_starts() -> None:
    """The hook works only while DBOS starts each queue's thread with the module's
    current `queue_worker_thread`, not a reference taken at import."""
    source = inspect.getsource(_queue)
    assert "target=queue_worker_thread" in source


def test_set_queue_thread_replaces_what_dbos_runs() -> None:
    before = dbos_private.queue_thread()

    def replacement(stop_event: object, dbos: object, queue: object) -> None:
        raise AssertionError("never run")

    try:
        dbos_private.set_queue_thread(replacement)
        assert _queue.queue_worker_thread is replacement
        assert dbos_private.queue_thread() is replacement
    finally:
        dbos_private.set_queue_thread(before)
    assert _queue.queue_worker_thread is before


def test_installed_dbos_is_in_the_pinned_range() -> None:
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [Requirement(r) for extra in ("dbos", "test") for r in project[extra] if r.startswith("dbos")]
    assert len(pins) == 2
    for pin in pins:
        assert pin.specifier.contains(version("dbos"))
        assert not pin.specifier.contains("3.5.0")  # a new minor release is checked before it is allowed
