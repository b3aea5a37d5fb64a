"""What the API processes and the workers must agree on in DBOS's system tables."""

from __future__ import annotations

from typing import Any

from compound.core.errors import ConfigError
from compound.core.settings import Settings

APP_NAME = "compound"
# Pinned, not DBOS's hash of the workflow code: a worker recovers only workflows of
# its own version, and every compound worker must be able to recover every other's.
APP_VERSION = "compound-1"
QUEUE = "compound_tasks"
WORKFLOW = "compound_run_task"


def approve_workflow_id(task_id: str) -> str:
    """The run that follows an approval is a second workflow (the first one ended at `planned`)."""
    return f"{task_id}:approved"


def check_queue_settings(settings: Settings) -> None:
    """Queue mode needs PostgreSQL: NOTIFY carries cancels and slot releases between processes."""
    for name, url in (("COMPOUND_DATABASE_URL", settings.database_url),
                      ("COMPOUND_DBOS_SYSTEM_DATABASE_URL", settings.system_database_url())):
        if not url.startswith("postgresql"):
            raise ConfigError(f"COMPOUND_EXECUTION=queue needs PostgreSQL; {name} is not a postgresql:// URL")
    if settings.queue_concurrency is not None and settings.worker_concurrency > settings.queue_concurrency:
        raise ConfigError("COMPOUND_WORKER_CONCURRENCY must not exceed COMPOUND_QUEUE_CONCURRENCY")


def queue_priority(priority: int) -> int:
    """A task's priority (0 most urgent .. 3) as DBOS's (1 .. 2**31-1, lowest dequeued
    first; 0 is what an enqueue without one gets, so every compound enqueue sets one)."""
    return priority + 1


def enqueue_options(workflow_id: str, priority: int) -> Any:
    from dbos import EnqueueOptions

    return EnqueueOptions(workflow_name=WORKFLOW, queue_name=QUEUE, workflow_id=workflow_id,
                          app_version=APP_VERSION, application_name=APP_NAME, priority=queue_priority(priority))
