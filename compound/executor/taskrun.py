"""A task's subtasks as they run (TaskRun): each by its kind (a model call, a tool call,
a registered step), with the plugins' hooks around it, and how each one ended, as
typed values (scheduler.Ended) its dependents quote. The workflow (workflow.py) makes
one per task and runs its DAG."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from compound.core.errors import BudgetExceeded, ProviderError
from compound.core.settings import Settings
from compound.executor.calls import CallSpec, ModelCalls
from compound.executor.plugins import PluginSteps
from compound.executor.scheduler import Cause, Ended, run_dag
from compound.executor.steps import StepFailed, ToolSteps
from compound.llm.base import Completion
from compound.plugins import Outcome
from compound.prompts import render
from compound.store.base import RunStore
from compound.store.models import CallKind, EndReason, SubtaskStatus
from compound.store.values import SubState, TaskState


class Engine(Protocol):
    """What a task's run uses of the workflow that made it."""

    settings: Settings
    store: RunStore
    calls: ModelCalls
    steps: ToolSteps
    plugins: PluginSteps


class TaskRun:
    """A task's subtasks as they run: the results so far and how each one ended."""

    def __init__(self, wf: Engine, st: TaskState, subs: list[SubState], daily: float | None) -> None:
        self.wf = wf
        self.st = st
        self.daily = daily
        self.subs = list(subs)
        self.results = {s.index: s.result or "" for s in subs if s.status == SubtaskStatus.completed}
        self.final = {s.index: s for s in subs}
        self.ended: dict[int, Ended] = {}
        self.sole = len(subs) == 1  # its result is the task's answer (_synthesize)
        self.answered: set[int] = set()  # failed or skipped, but a replanning round did their work

    def add(self, sub: SubState) -> None:
        self.subs.append(sub)
        self.final[sub.index] = sub

    def status(self, i: int) -> str:
        return SubtaskStatus.completed if i in self.results else self.final[i].status

    async def end(self, i: int, how: Ended, status: str, error: str, reason: EndReason) -> Ended:
        self.ended[i] = how
        self.final[i] = await self.wf.store.end_subtask(self.st.id, i, status=status, error=error, reason=reason)
        return how

    async def over_budget(self, i: int, exc: BudgetExceeded) -> Ended:
        """Its call did not fit what was left of the budget: skipped, the budget's doing."""
        return await self.end(i, Ended(Cause.budget, i, skipped=True), SubtaskStatus.skipped,
                              f"skipped: budget exhausted ({exc.message})", EndReason.budget)

    async def failed(self, i: int, error: str, reason: EndReason) -> Ended:
        return await self.end(i, Ended(Cause.failed, i, skipped=False), SubtaskStatus.failed, error, reason)

    async def act(self, i: int) -> Ended | None:
        """A direct tool call (kind "tool"): its result is the subtask's."""
        sub = self.final[i]
        try:
            done = await self.wf.steps.run_direct(self.st, sub)
        except StepFailed as exc:
            return await self.failed(i, exc.message, EndReason.failed_tool)
        self.final[i] = done
        if done.status == SubtaskStatus.completed:  # not when it was canceled meanwhile
            self.results[i] = done.result or ""
        return None

    async def step(self, i: int) -> Ended | None:
        """A subtask of a registered step kind (executor/plugins.py)."""
        sub = self.final[i]
        deps = {d: self.results[d] for d in sub.depends_on if d in self.results}
        try:
            text = await self.wf.plugins.run(self.st, sub, deps, daily=self.daily)
        except BudgetExceeded as exc:
            return await self.over_budget(i, exc)
        except StepFailed as exc:
            return await self.failed(i, exc.message, EndReason.failed_step)
        self.results[i] = text
        return None

    async def run_one(self, i: int) -> Ended | None:
        """The pre hooks (a veto skips the subtask), the subtask, then the post hooks."""
        plugins = self.wf.plugins
        if plugins.plugins.hooks:
            vetoed = await plugins.before(self.st, self.final[i])
            if vetoed is not None:
                ended: Ended | None = await self.end(i, Ended(Cause.vetoed, i, skipped=True), SubtaskStatus.skipped,
                                                     vetoed.error, EndReason.vetoed)
            else:
                ended = await self.run_kind(i)
            done = i in self.results
            await plugins.after(self.st, self.final[i], Outcome(
                status=SubtaskStatus.completed if done else self.final[i].status,
                result=self.results[i] if done else None, error=None if done else self.final[i].error))
            return ended
        return await self.run_kind(i)

    async def run_kind(self, i: int) -> Ended | None:
        st, sub, settings = self.st, self.final[i], self.wf.settings
        if sub.kind == "tool":
            return await self.act(i)
        if sub.kind != "llm":
            if self.wf.plugins.knows(sub.kind):
                return await self.step(i)
            loaded = ", ".join(self.wf.plugins.plugins.steps) or "none"
            return await self.failed(i, f"step kind {sub.kind!r} is not loaded here (loaded: {loaded}); "
                                     "COMPOUND_PLUGINS names the plugins to load", EndReason.failed_plan)
        # an optional dependency without a result is named, with why, in the prompt
        messages = render("subtask", request=st.prompt, description=sub.description,
                          dependencies=[(d, self.results[d]) for d in sub.depends_on if d in self.results],
                          missing=[(d, self.final[d].description, self.final[d].error or self.final[d].status)
                                   for d in sub.depends_on if d not in self.results and d in self.final])
        max_tokens = settings.max_tokens
        if self.sole and st.answer_max_tokens is not None:  # a chat client's max_tokens bounds the answer
            max_tokens = min(max_tokens, st.answer_max_tokens)
        spec = CallSpec(kind=CallKind.subtask, subtask=i, tier=sub.tier_assigned,
                        models=sub.models or settings.tier_models(sub.tier_assigned), messages=messages,
                        max_tokens=max_tokens, attempts_before=sub.attempts, answer=self.sole)
        try:
            if sub.tools:
                loop = await self.wf.steps.run_loop(st, sub, messages, models=spec.models, max_tokens=max_tokens,
                                                    daily=self.daily)
                self.final[i] = await self.wf.store.complete_subtask(st.id, i, result=loop.text,
                                                                     partial_reason=loop.partial_reason)
                self.results[i] = loop.text
                return None
            if settings.cascade(sub.tier_assigned) and len(spec.models) > 1:
                out = await cascade(self.wf, st, spec, sub, self.daily)
            else:
                out = await self.wf.calls.call(st, spec, daily=self.daily)
        except BudgetExceeded as exc:
            return await self.over_budget(i, exc)
        except ProviderError as exc:
            return await self.failed(i, exc.message, EndReason.failed_provider)
        self.results[i] = out.text
        return None

    async def skip(self, i: int, how: Ended, reason: str) -> None:
        # a chain that began with a budget refusal is the budget's doing, all the way down
        await self.end(i, how, SubtaskStatus.skipped, reason,
                       EndReason.budget if how.cause is Cause.budget else EndReason.skipped_dependency)

    async def run_dag(self) -> None:
        # A plan interrupted while it streamed may name entries that never arrived.
        n = len(self.subs)
        for s in self.subs:
            missing = [d for d in s.depends_on if not 0 <= d < n]
            if missing and self.status(s.index) == SubtaskStatus.pending:
                await self.end(s.index, Ended(Cause.failed, missing[0], skipped=True), SubtaskStatus.skipped,
                               f"skipped: dependency {missing[0]} is not in the plan", EndReason.failed_plan)
        await run_dag([[d for d in s.depends_on if 0 <= d < n] for s in self.subs],
                      [self.status(s.index) for s in self.subs], self.run_one, self.skip,
                      optional=[s.optional for s in self.subs])


async def cascade(wf: Engine, st: TaskState, spec: CallSpec, sub: SubState, daily: float | None) -> Completion:
    """The tier's first model answers; the same model checks the answer (a short
    YES/NO call, reserved like any other); the subtask completes with that answer in
    the check's settlement when it passes. A failed check, a check that could not
    be made (its model failed) or a first model that failed for good on transient
    errors calls the rest of the tier's chain; a permanent error fails the subtask,
    as it would without the cascade. Raises as ModelCalls.call does."""
    attempts = [spec.attempts_before]

    def counted(n: int) -> None:
        attempts[0] = n

    first, rest = spec.models[:1], spec.models[1:]
    try:
        draft = await wf.calls.call(st, dataclasses.replace(
            spec, models=first, answer=False, result_of=lambda _text: None), daily=daily, on_attempt=counted)
    except ProviderError as exc:
        if not exc.transient:
            raise
        draft = None
    if draft is not None:
        check = render("check", request=st.prompt, description=sub.description, answer=draft.text)
        verdict: list[bool] = []

        def stands(text: str, answer: str = draft.text) -> str | None:
            verdict.append(passes(text))
            return answer if verdict[-1] else None

        try:
            await wf.calls.call(st, CallSpec(
                kind=CallKind.check, subtask=spec.subtask, tier=spec.tier, models=first, messages=check,
                max_tokens=wf.settings.check_max_tokens, attempts_before=attempts[0], result_of=stands),
                daily=daily, on_attempt=counted)
        except ProviderError:
            verdict.append(False)
        if verdict[-1]:
            return draft
    return await wf.calls.call(st, dataclasses.replace(spec, models=rest, attempts_before=attempts[0]),
                                 daily=daily)


def passes(verdict: str) -> bool:
    """A check's answer: it passes only on a clear yes (its first word), so an answer
    the check could not read is not taken on trust."""
    words = verdict.strip().split()
    return bool(words) and words[0].strip(".,!:;*\"'").lower() in ("yes", "pass", "passes")
