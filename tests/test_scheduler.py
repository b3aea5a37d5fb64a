"""The typed causes a skipped subtask carries to its dependents, as a table, and the
eager DAG run handing them down."""

from __future__ import annotations

import pytest

from compound.executor.scheduler import Cause, Ended, run_dag


@pytest.mark.parametrize(("ended", "index", "said"), [
    (Ended(Cause.failed, 1, skipped=False), 1, "dependency 1 failed"),
    (Ended(Cause.canceled, 3, skipped=False), 3, "dependency 3 was canceled"),
    (Ended(Cause.budget, 2, skipped=True), 2, "dependency 2 was skipped (budget exhausted)"),
    (Ended(Cause.budget, 0, skipped=True), 4, "dependency 4 was skipped (budget exhausted)"),
    (Ended(Cause.failed, 1, skipped=True), 2, "dependency 2 was skipped (dependency 1 failed)"),
    (Ended(Cause.canceled, 0, skipped=True), 5, "dependency 5 was skipped (dependency 0 was canceled)"),
    (Ended(Cause.earlier, 2, skipped=True), 2, "dependency 2 was skipped (earlier)"),
])
def test_what_a_dependent_says_of_an_ended_subtask(ended: Ended, index: int, said: str) -> None:
    assert ended.why_dependent(index) == said


async def test_the_root_cause_travels_down_as_a_value() -> None:
    skipped: dict[int, tuple[Ended, str]] = {}

    async def run_one(i: int) -> Ended | None:
        return Ended(Cause.budget, i, skipped=True) if i == 1 else None

    async def skip(i: int, how: Ended, reason: str) -> None:
        skipped[i] = (how, reason)

    # 0 → 1 → 2 → 3, and 4 independent
    await run_dag([[], [0], [1], [2], []], ["pending"] * 5, run_one, skip)
    assert skipped == {
        2: (Ended(Cause.budget, 1, skipped=True), "skipped: dependency 1 was skipped (budget exhausted)"),
        3: (Ended(Cause.budget, 1, skipped=True), "skipped: dependency 2 was skipped (budget exhausted)"),
    }


async def test_a_resumed_failure_skips_its_dependents_at_once() -> None:
    skipped: dict[int, str] = {}
    ran: list[int] = []

    async def run_one(i: int) -> Ended | None:
        ran.append(i)
        return None

    async def skip(i: int, how: Ended, reason: str) -> None:
        skipped[i] = reason

    await run_dag([[], [0], [1], []], ["failed", "pending", "pending", "completed"], run_one, skip)
    assert ran == [] and skipped == {1: "skipped: dependency 0 failed",
                                     2: "skipped: dependency 1 was skipped (dependency 0 failed)"}
