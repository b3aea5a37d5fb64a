"""Tool scores of an eval item: the tools its plan names against those its gold plan
uses; and an item's catalogue as the executor's tools (offered to the planner, never
called)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from compound.core.errors import ToolUnavailable, UnknownTool
from compound.evals.graph import PRF
from compound.tools.catalogue import Tool, ToolResult


class _Step(Protocol):
    @property
    def tools(self) -> list[str]: ...

    @property
    def tool(self) -> str | None: ...


def named_tools(subtasks: Iterable[_Step]) -> list[str]:
    """The tools a plan names: each subtask's `tools` and a tool step's `tool`, sorted."""
    return sorted({name for s in subtasks for name in [*s.tools, *([s.tool] if s.tool else [])]})


def tool_prf(named: Collection[str], gold: Collection[str]) -> PRF:
    """The tools a plan names against those the gold plan uses, as sets: precision over
    the named, recall over the gold. Naming none where the gold uses none scores 1."""
    named, gold = set(named), set(gold)
    if not named and not gold:
        return PRF(1.0, 1.0)
    hit = len(named & gold)
    return PRF(hit / len(named) if named else 0.0, hit / len(gold) if gold else 0.0)


@dataclass(frozen=True)
class OfferedTools:
    """An item's catalogue as the executor's tools: the planner sees its cards and a
    plan may name its tools; no server stands behind them (an item with tools is only
    planned), so a call is refused."""

    tools: tuple[Tool, ...]

    def catalogue(self) -> list[Tool]:
        return list(self.tools)

    def tool(self, name: str) -> Tool:
        for t in self.tools:
            if t.name == name:
                return t
        raise UnknownTool(f"no tool {name!r} in the item's catalogue", tool=name)

    async def call(self, server: str, tool: str, arguments: Mapping[str, Any] | None = None, *,  # noqa: ARG002
                   timeout_s: float | None = None,  # noqa: ARG002
                   meta: Mapping[str, Any] | None = None) -> ToolResult:  # noqa: ARG002
        raise ToolUnavailable("an eval item's tools are offered to the planner only", tool=f"{server}.{tool}")
