"""Deterministic plan repair: fix without a model what needs none (a self-dependency,
an index out of range, a duplicate dependency), and say what was fixed."""

from __future__ import annotations

from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def repair_plan(data: Any) -> tuple[Any, list[str]]:
    """(repaired data, one warning per fix). Pure: `data` is not changed. Anything it
    cannot fix safely (cycles, blank descriptions, too many subtasks, wrong types) is
    left as it is for validation to report and the model to repair."""
    if not isinstance(data, dict) or not isinstance(data.get("subtasks"), list):
        return data, []
    subtasks: list[Any] = data["subtasks"]
    n = len(subtasks)
    warnings: list[str] = []
    fixed: list[Any] = []
    for i, item in enumerate(subtasks):
        depends = item.get("depends_on") if isinstance(item, dict) else None
        if not isinstance(depends, list):
            fixed.append(item)
            continue
        kept: list[Any] = []
        for d in depends:
            if not _is_int(d):
                kept.append(d)  # not an index at all: validation names it
            elif d == i:
                warnings.append(f"subtask {i} depended on itself; that dependency was dropped")
            elif not 0 <= d < n:
                warnings.append(f"subtask {i} depended on {d}, but the plan has {n} subtasks; "
                                "that dependency was dropped")
            elif d in kept:
                warnings.append(f"subtask {i} listed dependency {d} twice; the duplicate was dropped")
            else:
                kept.append(d)
        fixed.append({**item, "depends_on": kept} if kept != depends else item)
    if not warnings:
        return data, []
    return {**data, "subtasks": fixed}, warnings
