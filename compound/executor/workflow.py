"""One task's workflow: plan → run the DAG eagerly → synthesize, from and to the store.
Model calls go through ModelCalls; skip and failure causes travel as typed values
(scheduler.Ended), never as reason strings parsed later."""

from __future__ import annotations

import dataclasses
from typing import Any

from compound.core.errors import BudgetExceeded, PlanInvalid, ProviderError
from compound.core.settings import Settings
from compound.executor.calls import CallSpec, ModelCalls
from compound.executor.reuse import reusable
from compound.executor.scheduler import Cause, Ended, run_dag
from compound.executor.steps import StepFailed, ToolSteps
from compound.llm.base import Completion, Message, Usage
from compound.planner.router import route
from compound.planner.validate import validate_plan
from compound.prompts import render
from compound.store.base import RunStore, SubState, TaskState
from compound.store.models import CallKind, CallStatus, SubtaskStatus, TaskStatus


class Workflow:
    def __init__(self, *, settings: Settings, store: RunStore, calls: ModelCalls, versions: dict[str, str],
                 steps: ToolSteps | None = None) -> None:
        self.settings = settings
        self.store = store
        self.calls = calls
        self.versions = versions
        self.steps = steps or ToolSteps(settings=settings, store=store, calls=calls, tools=lambda: None)

    async def run(self, st: TaskState) -> None:
        """Take a loaded, recovered task on to a terminal state (or to `planned`, when
        it waits for approval)."""
        subs = st.subtasks
        status = st.status
        if not subs and not await self.store.set_status_unless_ended(st.id, TaskStatus.planning):
            # `planning` is the first thing the task's watchers hear: before any other read.
            return  # it ended meanwhile (canceled before it started)
        daily = await self.store.user_daily_budget(st.user_id, self.settings.user_daily_budget_usd)
        if not subs:
            planned = await self._plan(st, daily)
            if planned is None:
                return
            subs, status = planned, TaskStatus.planned
        if not st.approve:
            if status != TaskStatus.planned:
                await self.store.set_status_unless_ended(st.id, TaskStatus.planned)
            return
        if status != TaskStatus.executing and not await self.store.set_status_unless_ended(
                st.id, TaskStatus.executing):
            return  # it ended meanwhile (canceled while held at planned): nothing is reserved
        await self._execute(st, subs, daily)

    async def _plan(self, st: TaskState, daily: float | None) -> list[SubState] | None:
        warnings: list[str] = []
        try:
            if st.plan_in is not None:
                plan = validate_plan(st.plan_in, max_subtasks=self.settings.max_subtasks)
            else:
                from compound.planner.decompose import decompose

                model = self.settings.planner_model
                await self.store.set_planner_model(st.id, model)
                # Planner calls paid for before a restart (the plan was not saved) are
                # answered from their ledger rows, in order, not sent again.
                paid = [] if st.status == TaskStatus.queued else await self._paid_planner_answers(st.id)

                async def call(messages: list[Message], schema: dict[str, Any] | None) -> Completion:
                    if paid:
                        return paid.pop(0)
                    return await self.calls.call(st, CallSpec(
                        kind=CallKind.planner, subtask=None, tier=None, models=[model], messages=messages,
                        max_tokens=self.settings.planner_max_tokens, json_schema=schema), daily=daily)

                # The planner sees the tools of the servers that are up (as tool cards), and
                # its plan may name only those; a user's own plan is checked for shape only
                # (a server down now may be up when the call is made).
                servers = self.steps.tools()
                catalogue = [t for t in servers.catalogue() if t.available] if servers is not None else None
                plan = await decompose(call, st.prompt, max_subtasks=self.settings.max_subtasks,
                                       context=st.context, warnings=warnings, tools=catalogue or None)
        except BudgetExceeded as exc:
            await self.store.set_status_unless_ended(st.id, TaskStatus.failed,
                                        error=f"could not plan within the budget of ${st.budget_usd:g}: {exc.message}")
            return None
        except PlanInvalid as exc:
            await self.store.set_status_unless_ended(st.id, TaskStatus.failed, error=f"could not plan: {exc.message}")
            return None
        except ProviderError as exc:
            await self.store.set_status_unless_ended(st.id, TaskStatus.failed,
                                        error=f"could not plan: the planner model failed: {exc.message}")
            return None
        chosen = st.tier_models or {}  # a re-run's models for a tier replace the settings'
        subs = [
            SubState(index=r.index, description=plan.subtasks[r.index].description, tier_hint=r.tier_hint,
                     tier_assigned=r.tier_assigned, models=list(chosen.get(str(r.tier_assigned)) or r.models),
                     depends_on=plan.subtasks[r.index].needs, status=SubtaskStatus.pending,
                     model=(chosen.get(str(r.tier_assigned)) or r.models)[0],
                     optional=plan.subtasks[r.index].optional, kind=plan.subtasks[r.index].kind,
                     tools=list(plan.subtasks[r.index].tools), tool=plan.subtasks[r.index].tool,
                     arguments=plan.subtasks[r.index].arguments)
            for r in route(plan, self.settings)
        ]
        if st.rerun_of is not None:
            subs = await self._reuse(st.rerun_of, subs)
        await self.store.save_plan(st.id, reasoning=plan.reasoning, subtasks=subs, prompt_versions=self.versions,
                                   status=TaskStatus.planned, warnings=warnings)
        return subs

    async def _reuse(self, old_id: str, subs: list[SubState]) -> list[SubState]:
        """A re-run's subtasks with unchanged inputs, completed with the earlier results
        (no call, no cost); the rest stay pending."""
        old = await self.store.load(old_id)
        if old is None:
            return subs
        found = reusable(subs, old.subtasks)
        return [dataclasses.replace(s, status=SubtaskStatus.completed, result=found[s.index].result,
                                    model=found[s.index].model, reused_from=old_id)
                if s.index in found else s for s in subs]

    async def _paid_planner_answers(self, task_id: str) -> list[Completion]:
        rows = await self.store.ledger_rows(task_id)
        return [Completion(text=r["answer"], model=r["model"], usage=Usage(), cost_usd=0.0) for r in rows
                if r["kind"] == CallKind.planner and r["status"] == CallStatus.ok and r["answer"] is not None]

    async def _execute(self, st: TaskState, subs: list[SubState], daily: float | None) -> None:
        results = {s.index: s.result or "" for s in subs if s.status == SubtaskStatus.completed}
        final = {s.index: s for s in subs}
        ended: dict[int, Ended] = {}

        async def end(i: int, how: Ended, status: str, error: str) -> Ended:
            ended[i] = how
            final[i] = await self.store.end_subtask(st.id, i, status=status, error=error)
            return how

        sole = len(subs) == 1  # its result is the task's answer (_synthesize)

        async def act(i: int) -> Ended | None:
            sub = subs[i]
            try:
                text = await self.steps.run_direct(st, sub)
            except StepFailed as exc:
                return await end(i, Ended(Cause.failed, i, skipped=False), SubtaskStatus.failed, exc.message)
            final[i] = await self.store.complete_subtask(st.id, i, result=text)
            results[i] = text
            return None

        async def run_one(i: int) -> Ended | None:
            sub = subs[i]
            if sub.kind == "tool":
                return await act(i)
            # an optional dependency without a result is named, with why, in the prompt
            messages = render("subtask", request=st.prompt, description=sub.description,
                              dependencies=[(d, results[d]) for d in sub.depends_on if d in results],
                              missing=[(d, subs[d].description, final[d].error or final[d].status)
                                       for d in sub.depends_on if d not in results])
            max_tokens = self.settings.max_tokens
            if sole and st.answer_max_tokens is not None:  # a chat client's max_tokens bounds the answer
                max_tokens = min(max_tokens, st.answer_max_tokens)
            spec = CallSpec(kind=CallKind.subtask, subtask=i, tier=sub.tier_assigned,
                            models=sub.models or self.settings.tier_models(sub.tier_assigned), messages=messages,
                            max_tokens=max_tokens, attempts_before=sub.attempts, answer=sole)
            try:
                if sub.tools:
                    loop = await self.steps.run_loop(st, sub, messages, models=spec.models, max_tokens=max_tokens,
                                                     daily=daily)
                    final[i] = await self.store.complete_subtask(st.id, i, result=loop.text,
                                                                 partial_reason=loop.partial_reason)
                    results[i] = loop.text
                    return None
                if self.settings.cascade(sub.tier_assigned) and len(spec.models) > 1:
                    out = await self._cascade(st, spec, sub, daily)
                else:
                    out = await self.calls.call(st, spec, daily=daily)
            except BudgetExceeded as exc:
                return await end(i, Ended(Cause.budget, i, skipped=True), SubtaskStatus.skipped,
                                 f"skipped: budget exhausted ({exc.message})")
            except ProviderError as exc:
                return await end(i, Ended(Cause.failed, i, skipped=False), SubtaskStatus.failed, exc.message)
            results[i] = out.text
            return None

        async def skip(i: int, how: Ended, reason: str) -> None:
            await end(i, how, SubtaskStatus.skipped, reason)

        await run_dag([s.depends_on for s in subs], [s.status for s in subs], run_one, skip,
                      optional=[s.optional for s in subs])
        await self.calls.drain(st.id)  # every subtask's settlement committed before the task ends
        roots = sum(1 for i, e in ended.items() if e.cause is Cause.budget and e.root == i)
        budget_note = (f"budget of ${st.budget_usd:g} exhausted: {roots} subtask(s) skipped for budget"
                       if roots else None)
        await self._synthesize(st, subs, results, final, budget_note, daily)

    async def _cascade(self, st: TaskState, spec: CallSpec, sub: SubState, daily: float | None) -> Completion:
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
            draft = await self.calls.call(st, dataclasses.replace(
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
                await self.calls.call(st, CallSpec(
                    kind=CallKind.check, subtask=spec.subtask, tier=spec.tier, models=first, messages=check,
                    max_tokens=self.settings.check_max_tokens, attempts_before=attempts[0], result_of=stands),
                    daily=daily, on_attempt=counted)
            except ProviderError:
                verdict.append(False)
            if verdict[-1]:
                return draft
        return await self.calls.call(st, dataclasses.replace(spec, models=rest, attempts_before=attempts[0]),
                                     daily=daily)

    async def _synthesize(self, st: TaskState, subs: list[SubState], results: dict[int, str],
                          final: dict[int, SubState], budget_note: str | None, daily: float | None) -> None:
        done = [s for s in subs if s.index in results]
        missing = [(s.index, s.description, final[s.index].error or final[s.index].status) for s in subs
                   if s.index not in results]
        if not done:
            errors = "; ".join(f"subtask {i}: {why}" for i, _, why in missing[:5])
            await self.store.set_status_unless_ended(st.id, TaskStatus.failed,
                                        error=budget_note or f"no subtask completed: {errors}")
            return
        if len(subs) == 1:
            # A plan of one subtask: its result is the answer (streamed as it came, to a
            # door listening); a synthesis call would only restate it, at a higher tier.
            await self.store.set_status_unless_ended(st.id, TaskStatus.completed, result=results[subs[0].index])
            return
        tier = self.settings.synthesis_tier
        messages = render("synthesize", request=st.prompt, context=st.context,
                          results=[(s.index, s.description, results[s.index]) for s in done], missing=missing)
        max_tokens = self.settings.synthesis_max_tokens
        if st.answer_max_tokens is not None:  # a chat client's max_tokens bounds the answer
            max_tokens = min(max_tokens, st.answer_max_tokens)
        try:
            answer = await self.calls.call(st, CallSpec(
                kind=CallKind.synthesis, subtask=None, tier=tier,
                models=list((st.tier_models or {}).get(str(tier)) or self.settings.tier_models(tier)),
                messages=messages, max_tokens=max_tokens, answer=True), daily=daily)
        except (BudgetExceeded, ProviderError) as exc:
            joined = "\n\n".join(f"[{s.index}] {results[s.index]}" for s in done)
            why = "budget" if isinstance(exc, BudgetExceeded) else "provider error"
            await self.store.set_status_unless_ended(st.id, TaskStatus.partial, result=joined, error=(
                f"synthesis not run ({why}): {exc.message}; the result joins the subtask results"))
            return
        if missing:
            await self.store.set_status_unless_ended(st.id, TaskStatus.partial, result=answer.text,
                                        error=budget_note or f"{len(missing)} of {len(subs)} subtasks did not complete")
        else:
            await self.store.set_status_unless_ended(st.id, TaskStatus.completed, result=answer.text)


def passes(verdict: str) -> bool:
    """A check's answer: it passes only on a clear yes (its first word), so an answer
    the check could not read is not taken on trust."""
    words = verdict.strip().split()
    return bool(words) and words[0].strip(".,!:;*\"'").lower() in ("yes", "pass", "passes")
