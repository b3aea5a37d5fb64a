"""Plugins by entry point: step kinds (group `compound.steps`) and pre/post hooks
(group `compound.hooks`), loaded only when named in COMPOUND_PLUGINS. This is the
import path a plugin writes against (docs/tools.md, "Writing a step kind or a hook").

An entry point names a class (made with no arguments) or an object. A step kind has
`name`, `description`, `arguments_schema`, `worst_case_usd(arguments)` and
`async run(ctx)`; a hook has `name`, `async before(subtask)` and `async after(subtask,
outcome)`. An entry point not named in COMPOUND_PLUGINS is never imported."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

from compound.core.errors import ConfigError

STEPS_GROUP = "compound.steps"
HOOKS_GROUP = "compound.hooks"
BUILT_IN_KINDS = ("llm", "tool")


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step kind's run gets: its subtask, its arguments and its dependencies'
    results (by index)."""

    task_id: str
    request: str  # the task's request, as the user wrote it
    index: int
    description: str
    arguments: dict[str, Any]
    dependencies: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepResult:
    """A step's result with what it cost (a plain `str` from run() costs nothing)."""

    text: str
    cost_usd: float = 0.0


class StepError(Exception):
    """Raised by a step that did not give a result: the subtask fails with `message`;
    `cost_usd` is what it spent (None: unknown, booked at its worst case)."""

    def __init__(self, message: str, *, cost_usd: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cost_usd = cost_usd


@runtime_checkable
class StepKind(Protocol):
    """A kind of subtask a plan may name (`{"kind": name, "arguments": {...}}`)."""

    name: str
    description: str
    arguments_schema: dict[str, Any]  # a JSON schema of an object: shown to the planner, checked on submit

    def worst_case_usd(self, arguments: dict[str, Any]) -> float: ...

    async def run(self, ctx: StepContext) -> str | StepResult: ...


@dataclass(frozen=True, slots=True)
class SubtaskView:
    """A subtask as a hook sees it."""

    task_id: str
    request: str
    index: int
    description: str
    kind: str
    arguments: dict[str, Any] | None
    tools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Veto:
    """A pre hook's refusal: the subtask is skipped with `reason`."""

    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a subtask ended, as a post hook sees it: `status` completed, failed or skipped."""

    status: str
    result: str | None
    error: str | None


@runtime_checkable
class Hook(Protocol):
    """Runs around every subtask of every kind. `before` may veto it (return a Veto);
    `after` sees how it ended and cannot change it."""

    name: str

    async def before(self, subtask: SubtaskView) -> Veto | None: ...

    async def after(self, subtask: SubtaskView, outcome: Outcome) -> None: ...


@dataclass(frozen=True, slots=True)
class StepCard:
    """What the planner is shown of a step kind (like a tool card)."""

    name: str
    description: str
    arguments: tuple[str, ...]

    def line(self) -> str:
        head = f"- {self.name}({', '.join(self.arguments)})"
        return f"{head}: {self.description}" if self.description else head


@dataclass(frozen=True)
class Plugins:
    """The loaded plugins: step kinds by name, hooks in the order COMPOUND_PLUGINS names them."""

    steps: Mapping[str, StepKind] = field(default_factory=dict)
    hooks: tuple[Hook, ...] = ()

    def kinds(self) -> dict[str, dict[str, Any]]:
        """Each step kind's argument schema, by name (what plan validation checks)."""
        return {name: dict(step.arguments_schema) for name, step in self.steps.items()}

    def cards(self) -> list[StepCard]:
        return [StepCard(s.name, first_line(s.description), argument_names(s.arguments_schema))
                for s in self.steps.values()]


NO_PLUGINS = Plugins()


def first_line(text: str, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line[:limit]


def argument_names(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """The properties of an object schema, required ones first."""
    props = schema.get("properties")
    names = list(props) if isinstance(props, dict) else []
    required = [r for r in schema.get("required") or [] if r in names]
    return tuple(required + [n for n in names if n not in required])


def load_plugins(names: Sequence[str]) -> Plugins:
    """The plugins COMPOUND_PLUGINS names, each imported once per process; ConfigError
    naming the plugin when one is not installed, fails to import or is not a step kind
    or a hook."""
    if not names:
        return NO_PLUGINS
    return _load(tuple(names))


@cache
def _load(names: tuple[str, ...]) -> Plugins:
    found: dict[str, list[EntryPoint]] = {}
    for group in (STEPS_GROUP, HOOKS_GROUP):
        for ep in entry_points(group=group):
            found.setdefault(ep.name, []).append(ep)
    steps: dict[str, StepKind] = {}
    hooks: list[Hook] = []
    for name in names:
        eps = found.get(name)
        if not eps:
            there = ", ".join(sorted(found)) or "none"
            raise ConfigError(f"plugin {name!r} (COMPOUND_PLUGINS) is not installed: no entry point of that name "
                              f"in the groups {STEPS_GROUP} or {HOOKS_GROUP} (installed: {there})")
        for ep in eps:
            obj = _instance(name, ep)
            if ep.group == STEPS_GROUP:
                step = _step(name, ep, obj)
                if step.name in steps:
                    raise ConfigError(f"plugin {name!r}: step kind {step.name!r} is registered twice")
                steps[step.name] = step
            else:
                hooks.append(_hook(name, ep, obj))
    return Plugins(steps=steps, hooks=tuple(hooks))


def _instance(name: str, ep: EntryPoint) -> object:
    try:
        obj = ep.load()
        return obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise ConfigError(f"plugin {name!r} (COMPOUND_PLUGINS) failed to load from {ep.value} "
                          f"(group {ep.group}): {type(exc).__name__}: {exc}") from None


def _step(name: str, ep: EntryPoint, obj: object) -> StepKind:
    where = f"plugin {name!r} ({ep.value}, group {ep.group})"
    if not isinstance(obj, StepKind):
        raise ConfigError(f"{where} is not a step kind: it needs name, description, arguments_schema, "
                          "worst_case_usd(arguments) and async run(ctx)")
    if not isinstance(obj.name, str) or not obj.name or obj.name in BUILT_IN_KINDS:
        raise ConfigError(f"{where}: a step kind's name must be a non-empty string other than "
                          f"{' and '.join(BUILT_IN_KINDS)}, not {obj.name!r}")
    schema = obj.arguments_schema
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ConfigError(f"{where}: arguments_schema must be a JSON schema of an object")
    return obj


def _hook(name: str, ep: EntryPoint, obj: object) -> Hook:
    if not isinstance(obj, Hook):
        raise ConfigError(f"plugin {name!r} ({ep.value}, group {ep.group}) is not a hook: it needs name, "
                          "async before(subtask) and async after(subtask, outcome)")
    return obj


def valid_cost(value: object) -> float | None:
    """A cost a plugin reported, as a float, or None when it is not a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    cost = float(value)
    return cost if math.isfinite(cost) and cost >= 0 else None
