"""The loaded plugins at work (compound/plugins.py): a subtask of a registered step kind
run under the budget, and the hooks around every subtask.

A step is reserved at its `worst_case_usd(arguments)` before it runs and settled at the
cost it reports (at most that), on a ledger row of its own (kind "subtask", model
`step:<name>`), like every model call; its result completes the subtask in the same
transaction. A step that raises fails its subtask, booked at the cost a StepError
names or else at its worst case (what it spent is not known)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from compound.core.errors import BudgetExceeded
from compound.core.logging import get_logger
from compound.executor.calls import ModelCalls, clean_text
from compound.executor.steps import StepFailed
from compound.plugins import (
    Hook,
    Outcome,
    Plugins,
    StepContext,
    StepError,
    StepKind,
    StepResult,
    SubtaskView,
    Veto,
    valid_cost,
)
from compound.store.base import RunStore
from compound.store.models import CallKind, CallStatus
from compound.store.values import (
    BudgetRefusal,
    DailyRefusal,
    Reservation,
    ReserveRequest,
    Settlement,
    SubState,
    TaskState,
)

log = get_logger("compound.executor")
STEP_MODEL_PREFIX = "step:"  # a step's ledger rows name it so, in the model column


@dataclass(frozen=True, slots=True)
class Vetoed:
    """A pre hook's veto: the subtask is skipped with this reason."""

    hook: str
    reason: str

    @property
    def error(self) -> str:
        return f"skipped: vetoed by hook {self.hook}: {self.reason}"


def view(st: TaskState, sub: SubState) -> SubtaskView:
    return SubtaskView(task_id=st.id, request=st.prompt, index=sub.index, description=sub.description,
                       kind=sub.kind, arguments=dict(sub.arguments) if sub.arguments is not None else None,
                       tools=tuple(sub.tools))


class PluginSteps:
    """Runs the step kinds and the hooks of `plugins` for a workflow's subtasks."""

    def __init__(self, *, plugins: Plugins, store: RunStore, calls: ModelCalls) -> None:
        self.plugins = plugins
        self.store = store
        self.calls = calls

    def knows(self, kind: str) -> bool:
        return kind in self.plugins.steps

    # hooks -----------------------------------------------------------------------------

    async def before(self, st: TaskState, sub: SubState) -> Vetoed | None:
        """The pre hooks in order; the first veto wins. A hook that raises vetoes too
        (a guard that cannot decide does not let the subtask through)."""
        seen = view(st, sub)
        for hook in self.plugins.hooks:
            try:
                got = await hook.before(seen)
            except Exception as exc:
                log.exception("pre hook failed", hook=_name(hook), task_id=st.id, subtask=sub.index)
                return Vetoed(_name(hook), f"the hook failed ({type(exc).__name__}: {exc})")
            if isinstance(got, Veto):
                return Vetoed(_name(hook), str(got.reason))
        return None

    async def after(self, st: TaskState, sub: SubState, outcome: Outcome) -> None:
        """The post hooks in order; they see the outcome and cannot change it (one that
        raises is logged and the run goes on)."""
        seen = view(st, sub)
        for hook in self.plugins.hooks:
            try:
                await hook.after(seen, outcome)
            except Exception:
                log.exception("post hook failed", hook=_name(hook), task_id=st.id, subtask=sub.index)

    # step kinds ------------------------------------------------------------------------

    async def run(self, st: TaskState, sub: SubState, dependencies: dict[int, str], *,
                  daily: float | None) -> str:
        """The step's result (the subtask completed with it); BudgetExceeded when its
        worst case does not fit; StepFailed when it gives no result."""
        step = self.plugins.steps[sub.kind]
        arguments = dict(sub.arguments or {})
        amount = _worst_case(step, arguments)
        res = await self._reserve(st, sub, step, amount, daily)
        ctx = StepContext(task_id=st.id, request=st.prompt, index=sub.index, description=sub.description,
                          arguments=arguments, dependencies=dependencies)
        started = time.perf_counter()

        def booked(status: str, cost: float, error: str | None = None, text: str | None = None) -> Settlement:
            return Settlement(status=status, cost_usd=cost, latency_ms=(time.perf_counter() - started) * 1000,
                              error=error, complete_with=text)

        try:
            got = await step.run(ctx)
        except asyncio.CancelledError:  # booked at its worst case; the task's end waits for it
            self.calls.pipeline(st.id, self.store.settle(st.id, res, sub.index, booked(
                CallStatus.canceled, amount, "canceled while it ran; counted at its worst case")))
            raise
        except Exception as exc:
            spent = valid_cost(exc.cost_usd) if isinstance(exc, StepError) else None
            message = exc.message if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
            message = clean_text(f"step {step.name}: {message}")[:2000]
            await self.store.settle(st.id, res, sub.index, booked(
                CallStatus.error, amount if spent is None else min(spent, amount), message[:500]))
            raise StepFailed(message) from None
        text, cost = _text_and_cost(step, got, amount)
        await self.store.settle(st.id, res, sub.index, booked(CallStatus.ok, cost, text=text))
        return text

    async def _reserve(self, st: TaskState, sub: SubState, step: StepKind, amount: float,
                       daily: float | None) -> Reservation:
        model = STEP_MODEL_PREFIX + step.name
        (got,) = await self.store.reserve([ReserveRequest(
            task_id=st.id, user_id=st.user_id, kind=CallKind.subtask, subtask=sub.index, tier=sub.tier_assigned,
            model=model, attempt=sub.attempts + 1, amount=amount, daily_budget=daily)])
        if isinstance(got, BudgetRefusal):
            raise BudgetExceeded(f"step {step.name} may cost up to ${amount:.6f}; ${got.left:.6f} of the budget "
                                 "is left")
        if isinstance(got, DailyRefusal):
            raise BudgetExceeded(f"the user's daily budget of ${daily:g} is spent (${got.spent:.6f} today); "
                                 f"step {step.name} may cost up to ${amount:.6f}")
        return got


def _name(hook: Hook) -> str:
    return str(getattr(hook, "name", type(hook).__name__))


def _worst_case(step: StepKind, arguments: dict[str, Any]) -> float:
    try:
        value: object = step.worst_case_usd(arguments)
    except Exception as exc:
        raise StepFailed(f"step {step.name}: worst_case_usd failed ({type(exc).__name__}: {exc})") from None
    amount = valid_cost(value)
    if amount is None:
        raise StepFailed(f"step {step.name}: worst_case_usd gave {value!r}; it must be a number >= 0")
    return amount


def _text_and_cost(step: StepKind, got: object, amount: float) -> tuple[str, float]:
    """What run() returned as (text, cost): a cost above the reservation is booked at
    the reservation (the budget holds) and logged."""
    cost: float | None = 0.0
    if isinstance(got, StepResult):
        raw: object = got.text
        cost = valid_cost(got.cost_usd)
        if cost is None:
            log.warning("step reported an invalid cost; booked at its worst case", step=step.name)
            cost = amount
    else:
        raw = got
    text = raw if isinstance(raw, str) else str(raw)
    assert cost is not None
    if cost > amount:
        log.warning("step cost more than its worst case; booked at the worst case", step=step.name,
                    reported=cost, worst_case=amount)
        cost = amount
    return clean_text(text), cost
