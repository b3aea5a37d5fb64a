"""What to do: the plan a request becomes (PlanIn of design.md section 9), and the pure
graph arithmetic over it: waves and the critical path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Dependency(BaseModel):
    """A dependency written out: `required: false` makes it optional (the dependent
    runs even when this one failed or was skipped, told what is missing and why)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(description="0-based index of the subtask whose result this needs")
    required: bool = Field(default=True, description="false: run even without this result")


class SubtaskIn(BaseModel):
    """One step of a plan, as the planner model (or a user) writes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    description: str = Field(description="what to do, in words a model can act on")
    tier_hint: int = Field(default=1, description="1 = cheap/fast, 2 = balanced, 3 = strongest")
    depends_on: list[int | Dependency] = Field(
        default_factory=list,
        description="subtasks whose results this needs: 0-based indices, or "
                    '{"index": i, "required": false} for one it can do without',
    )
    # Subtasks that act (design.md section 11): the tools its model may call, or one
    # direct call of `tool` with `arguments` (kind "tool", no model).
    kind: str = Field(default="llm", description='"llm" (a model, with `tools` if any) or "tool" (one direct call)')
    tools: list[str] = Field(default_factory=list, description="tools (server.tool) the subtask's model may call")
    tool: str | None = Field(default=None, description='kind "tool": the tool to call (server.tool)')
    arguments: dict[str, Any] | None = Field(default=None, description='kind "tool": the call\'s arguments')

    @property
    def needs(self) -> list[int]:
        """Every dependency's index, required or not, in order."""
        return [d if isinstance(d, int) else d.index for d in self.depends_on]

    @property
    def optional(self) -> list[int]:
        """The indices of the dependencies that are not required."""
        return [d.index for d in self.depends_on if isinstance(d, Dependency) and not d.required]


class PlanIn(BaseModel):
    """A plan: why it was split so, and the subtasks (a DAG through depends_on)."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        json_schema_extra={
            "example": {
                "reasoning": "Two independent lookups, then a comparison.",
                "subtasks": [
                    {"description": "Summarise the pros of SQLite", "tier_hint": 1, "depends_on": []},
                    {"description": "Summarise the pros of PostgreSQL", "tier_hint": 1, "depends_on": []},
                    {"description": "Compare the two summaries", "tier_hint": 2, "depends_on": [0, 1]},
                ],
            }
        },
    )

    reasoning: str | None = None
    subtasks: list[SubtaskIn]

    def deps(self) -> list[list[int]]:
        return [s.needs for s in self.subtasks]


def waves(deps: Sequence[Sequence[int]]) -> list[list[int]]:
    """Group subtask indices by depth: wave 0 has no dependencies, wave k depends on
    something in wave k-1. Assumes a valid DAG."""
    depth = _longest_from_roots(deps, lambda _i: 1)
    if not depth:
        return []
    out: list[list[int]] = [[] for _ in range(int(max(depth)))]
    for i, d in enumerate(depth):
        out[int(d) - 1].append(i)
    return out


def critical_path(
    deps: Sequence[Sequence[int]], weight: Callable[[int], float] | None = None
) -> list[int]:
    """The longest chain of dependent subtasks (by summed weight, default 1 each),
    root first. Ties go to the lower index, so the answer is deterministic."""
    w = weight or (lambda _i: 1.0)
    finish = _longest_from_roots(deps, w)
    if not finish:
        return []
    end = max(range(len(finish)), key=lambda i: (finish[i], -i))
    path = [end]
    while deps[path[-1]]:
        prev = max(deps[path[-1]], key=lambda d: (finish[d], -d))
        path.append(prev)
    return path[::-1]


def critical_path_length(
    deps: Sequence[Sequence[int]], weight: Callable[[int], float] | None = None
) -> float:
    w = weight or (lambda _i: 1.0)
    finish = _longest_from_roots(deps, w)
    return max(finish) if finish else 0.0


def topological_order(deps: Sequence[Sequence[int]]) -> list[int]:
    """Kahn's order, lowest index first among the ready. Assumes a valid DAG."""
    n = len(deps)
    indegree = [len(set(d)) for d in deps]
    children: list[list[int]] = [[] for _ in range(n)]
    for i, ds in enumerate(deps):
        for d in set(ds):
            children[d].append(i)
    import heapq

    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in children[i]:
            indegree[c] -= 1
            if indegree[c] == 0:
                heapq.heappush(ready, c)
    return order


def dependents(deps: Sequence[Sequence[int]]) -> list[list[int]]:
    """children[i] = the subtasks that depend directly on i."""
    children: list[list[int]] = [[] for _ in deps]
    for i, ds in enumerate(deps):
        for d in sorted(set(ds)):
            children[d].append(i)
    return children


def _longest_from_roots(deps: Sequence[Sequence[int]], weight: Callable[[int], float]) -> list[float]:
    finish = [0.0] * len(deps)
    for i in topological_order(deps):
        start = max((finish[d] for d in deps[i]), default=0.0)
        finish[i] = start + weight(i)
    return finish


def missing_join(deps: Sequence[Sequence[int]]) -> tuple[int, list[int], list[int]] | None:
    """A likely missing join: the last subtask depends on something (it joins or uses
    earlier results) while other subtasks' results are used by no subtask at all.
    Returns (the last subtask, what it depends on, the unused subtasks), or None.
    A check only: the plan may mean it (the synthesis sees every result anyway)."""
    n = len(deps)
    if n < 3 or not deps[-1]:
        return None
    used = {d for ds in deps for d in ds}
    unused = [i for i in range(n - 1) if i not in used]
    if not unused:
        return None
    return n - 1, sorted(set(deps[-1])), unused
