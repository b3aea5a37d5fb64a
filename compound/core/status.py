"""Task and subtask statuses, the transitions allowed between them, and why a task or
subtask ended: defined once, as data. The store writes a status only from a status
this table allows (`UPDATE ... WHERE status IN (allowed_from(to))`), so a terminal
status never changes and two processes can never both end a task."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum


class TaskStatus(StrEnum):
    queued = "queued"
    planning = "planning"
    planned = "planned"
    executing = "executing"
    completed = "completed"
    partial = "partial"
    failed = "failed"
    canceled = "canceled"


class SubtaskStatus(StrEnum):
    pending = "pending"
    running = "running"
    awaiting_approval = "awaiting_approval"  # a tool call of it waits for a person's yes or no
    completed = "completed"
    failed = "failed"
    skipped = "skipped"
    canceled = "canceled"


class EndReason(StrEnum):
    """Why a task or a subtask ended, written with its terminal status."""

    completed = "completed"  # it did all it was asked
    budget = "budget"  # the task's budget (or its user's daily budget) had no room for a call
    canceled = "canceled"  # canceled by request
    failed_plan = "failed_plan"  # no valid plan: the planner's answer, or a dependency the plan lacks
    failed_provider = "failed_provider"  # model calls failed for good
    failed_tool = "failed_tool"  # a direct tool call failed
    failed_step = "failed_step"  # a registered step kind failed (compound.plugins)
    vetoed = "vetoed"  # (a subtask) a pre hook refused to let it run
    failed_subtasks = "failed_subtasks"  # (a task) subtasks ended without a result, for none of the above
    skipped_dependency = "skipped_dependency"  # (a subtask) a dependency ended without a result
    internal = "internal"  # the engine itself failed (a crash it recorded)


_Q, _PG, _PD, _EX = TaskStatus.queued, TaskStatus.planning, TaskStatus.planned, TaskStatus.executing
_ENDS = (TaskStatus.failed, TaskStatus.canceled)

# from -> the statuses a task may move to. Planning again from `planning` is a resume
# (the process that planned it stopped); a streamed plan runs from `planning` on.
TASK_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    _Q: frozenset({_PG, _PD, *_ENDS}),
    _PG: frozenset({_PG, _PD, _EX, *_ENDS}),
    _PD: frozenset({_EX, *_ENDS}),
    _EX: frozenset({TaskStatus.completed, TaskStatus.partial, *_ENDS}),
    TaskStatus.completed: frozenset(),
    TaskStatus.partial: frozenset(),
    TaskStatus.failed: frozenset(),
    TaskStatus.canceled: frozenset(),
}

_P, _R, _A = SubtaskStatus.pending, SubtaskStatus.running, SubtaskStatus.awaiting_approval
_SUB_ENDS = (SubtaskStatus.completed, SubtaskStatus.failed, SubtaskStatus.skipped, SubtaskStatus.canceled)

# from -> the statuses a subtask may move to. running -> running: a call's next attempt;
# running -> pending: recovery after a crash (its call is booked lost and made again);
# pending -> awaiting_approval: a direct tool call held at once; awaiting_approval ->
# pending: recovery after a crash (the held call is still held, the run waits again).
SUBTASK_TRANSITIONS: Mapping[SubtaskStatus, frozenset[SubtaskStatus]] = {
    _P: frozenset({_R, _A, *_SUB_ENDS}),
    _R: frozenset({_P, _R, _A, *_SUB_ENDS}),
    _A: frozenset({_P, _R, SubtaskStatus.failed, SubtaskStatus.canceled}),
    SubtaskStatus.completed: frozenset(),
    SubtaskStatus.failed: frozenset(),
    SubtaskStatus.skipped: frozenset(),
    SubtaskStatus.canceled: frozenset(),
}

TERMINAL_TASK = frozenset(s for s, out in TASK_TRANSITIONS.items() if not out)
TERMINAL_SUBTASK = frozenset(s for s, out in SUBTASK_TRANSITIONS.items() if not out)


def task_sources(to: str, *, only_from: Collection[str] | None = None) -> list[str]:
    """The statuses a task may move to `to` from (narrowed to `only_from`), sorted."""
    out = {str(s) for s, nexts in TASK_TRANSITIONS.items() if to in nexts}
    return sorted(out if only_from is None else out & {str(s) for s in only_from})


def subtask_sources(to: str) -> list[str]:
    """The statuses a subtask may move to `to` from, sorted."""
    return sorted(str(s) for s, nexts in SUBTASK_TRANSITIONS.items() if to in nexts)


def task_may(frm: str, to: str) -> bool:
    return frm in TASK_TRANSITIONS and to in TASK_TRANSITIONS[TaskStatus(frm)]


def subtask_may(frm: str, to: str) -> bool:
    return frm in SUBTASK_TRANSITIONS and to in SUBTASK_TRANSITIONS[SubtaskStatus(frm)]


# The reason an end status gives by itself, when the writer names none.
_DEFAULT_REASON: Mapping[str, EndReason] = {
    "completed": EndReason.completed, "canceled": EndReason.canceled, "failed": EndReason.internal,
    "partial": EndReason.failed_subtasks, "skipped": EndReason.skipped_dependency,
}


def end_reason(status: str, given: str | None = None) -> str | None:
    """The reason written with `status`: `given` (checked), else what the status says by
    itself; None for a status that is not an end."""
    if status not in _DEFAULT_REASON:
        return None
    return EndReason(given).value if given is not None else _DEFAULT_REASON[status].value


def csv(statuses: Collection[str]) -> str:
    """Statuses as one parameter (`a,b`), which both dialects' SQL split."""
    return ",".join(statuses)


def task_path(to: str) -> list[str]:
    """The shortest way from `queued` to `to` through the table (queued itself not
    named): what a task goes through to get there."""
    paths: dict[str, list[str]] = {TaskStatus.queued.value: []}
    frontier = [TaskStatus.queued]
    while frontier and to not in paths:
        nexts = []
        for s in frontier:
            for n in sorted(TASK_TRANSITIONS[s]):
                if n.value not in paths:
                    paths[n.value] = [*paths[s.value], n.value]
                    nexts.append(n)
        frontier = nexts
    if to not in paths:
        raise ValueError(f"no task status {to!r}")
    return paths[to]
