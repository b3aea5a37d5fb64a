"""One task's workflow: plan → run the DAG eagerly → replan what failed for good →
synthesize, from and to the store. With a streamed plan the DAG runs while the plan
arrives (growing.py). Model calls go through ModelCalls; skip and failure causes travel
as typed values (scheduler.Ended), never as reason strings parsed later."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from compound.core.errors import BudgetExceeded, PlanInvalid, ProviderError
from compound.core.settings import Settings
from compound.executor.calls import CallSpec, ModelCalls
from compound.executor.growing import HELD, GrowingDag
from compound.executor.plugins import PluginSteps
from compound.executor.reuse import reusable
from compound.executor.scheduler import Cause
from compound.executor.steps import ToolSteps
from compound.executor.taskrun import TaskRun
from compound.llm.base import Completion, Message, Usage
from compound.planner.plan import Dependency, PlanIn, SubtaskIn
from compound.planner.replan import Failed, Finished, replan
from compound.planner.router import route
from compound.planner.stream import same
from compound.planner.validate import validate_plan
from compound.plugins import Plugins, load_plugins
from compound.prompts import render
from compound.store.base import RunStore
from compound.store.models import CallKind, CallStatus, EndReason, SubtaskStatus, TaskStatus
from compound.store.values import SubState, TaskState


def _why(status: str, error: str | None) -> str:
    if status == SubtaskStatus.failed:
        return f"failed for good ({error or 'no error given'})"
    return error or status


class _Arrivals:
    """A streamed plan's entries on their way to the DAG: one writer stores them in index
    order (a subtask is stored before it can start) and hands each to the DAG; once the
    plan is whole, an entry held back (it may still change) takes the plan's version or
    goes unchanged."""

    def __init__(self, wf: Workflow, st: TaskState, run: TaskRun, dag: GrowingDag) -> None:
        self.wf, self.st, self.run, self.dag = wf, st, run, dag
        self.handed: list[SubtaskIn] = []
        # What the writer does, in order: add an entry; give a held one the whole plan's
        # version (or let it go unchanged: None); None alone: the plan is whole.
        self.queue: asyncio.Queue[SubtaskIn | tuple[int, SubtaskIn | None] | None] = asyncio.Queue()

    def entry(self, _index: int, got: SubtaskIn) -> None:
        self.handed.append(got)
        self.queue.put_nowait(got)

    def done(self) -> None:
        self.queue.put_nowait(None)

    def whole(self, subtasks: list[SubtaskIn]) -> None:
        """The whole plan: the held entries settled, the rest added, then the end."""
        for index in range(len(self.handed)):  # what the whole plan changed had not started: it was held
            if self.dag.state.get(index) == HELD:
                changed = not same(subtasks[index], self.handed[index])
                self.queue.put_nowait((index, subtasks[index] if changed else None))
        for rest in subtasks[len(self.handed):]:
            self.queue.put_nowait(rest)
        self.done()

    async def write(self) -> None:
        run, dag, store = self.run, self.dag, self.wf.store
        while (got := await self.queue.get()) is not None:
            if isinstance(got, SubtaskIn):
                (sub,) = self.wf.subs([got], len(run.subs), 0)
                await store.add_subtasks(self.st.id, [sub])
                run.add(sub)
                dag.add(sub.index, sub.depends_on)
                continue
            index, version = got
            if version is None:
                dag.release(index)
                continue
            (sub,) = self.wf.subs([version], index, 0)
            run.final[index] = await store.replace_pending(self.st.id, sub)
            run.subs[index] = run.final[index]
            dag.replace(index, sub.depends_on)
        dag.close()


class Workflow:
    def __init__(self, *, settings: Settings, store: RunStore, calls: ModelCalls, versions: dict[str, str],
                 steps: ToolSteps | None = None, plugins: Plugins | None = None) -> None:
        self.settings = settings
        self.store = store
        self.calls = calls
        self.versions = versions
        self.steps = steps or ToolSteps(settings=settings, store=store, calls=calls, tools=lambda: None)
        # The plugins COMPOUND_PLUGINS names, loaded here so every host (this process, the
        # executor's child process, a queue worker) runs the same step kinds and hooks.
        self.plugins = PluginSteps(plugins=plugins if plugins is not None else load_plugins(settings.plugins),
                                   store=store, calls=calls)

    async def run(self, st: TaskState) -> None:
        """Take a loaded, recovered task on to a terminal state (or to `planned`, when
        it waits for approval)."""
        subs = st.subtasks
        status = st.status
        if not subs and not await self.store.set_status_unless_ended(st.id, TaskStatus.planning):
            # `planning` is the first thing the task's watchers hear: before any other read.
            return  # it ended meanwhile (canceled before it started)
        daily = await self.store.user_daily_budget(st.user_id, self.settings.user_daily_budget_usd)
        if not subs and self._streams(st):
            run = await self._plan_streamed(st, daily)
            if run is not None:
                await self._finish(run)
            return
        if subs and st.status == TaskStatus.planning and st.plan_in is None:
            kept = await self._plan_kept(st, subs, daily)  # a streamed plan cut short by a restart
            if kept is None:
                return
            subs, status = kept, TaskStatus.planned
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
        run = TaskRun(self, st, subs, daily)
        await run.run_dag()
        await self._finish(run)

    def _streams(self, st: TaskState) -> bool:
        """A plan is streamed when it is the planner's, runs at once, and no planner
        call was paid for before a restart (those answers are replayed, not streamed)."""
        return (self.settings.stream_plans and st.plan_in is None and st.approve
                and st.status == TaskStatus.queued)

    def subs(self, plan_subtasks: list[SubtaskIn], first: int, round_: int,
              chosen: dict[str, list[str]] | None = None) -> list[SubState]:
        """The plan's entries as subtasks from index `first` (`chosen`: a re-run's models
        for a tier, replacing the settings')."""
        chosen = chosen or {}
        routes = route(PlanIn(subtasks=plan_subtasks), self.settings)
        out = []
        for r in routes:
            entry = plan_subtasks[r.index]
            models = list(chosen.get(str(r.tier_assigned)) or r.models)
            out.append(SubState(index=first + r.index, description=entry.description, tier_hint=r.tier_hint,
                                tier_assigned=r.tier_assigned, models=models,
                                depends_on=list(entry.needs),
                                status=SubtaskStatus.pending, model=models[0], round=round_,
                                optional=list(entry.optional), kind=entry.kind, tools=list(entry.tools),
                                tool=entry.tool, arguments=entry.arguments))
        return out

    def _catalogue(self) -> list[Any] | None:
        """The tools of the servers that are up, which the planner sees as tool cards and
        its plan may name; a user's own plan is checked for shape only (a server down
        now may be up when the call is made)."""
        servers = self.steps.tools()
        catalogue = [t for t in servers.catalogue() if t.available] if servers is not None else None
        return catalogue or None

    async def _plan_streamed(self, st: TaskState, daily: float | None) -> TaskRun | None:
        """Plan and run together: each entry that arrives complete and valid is stored
        and handed to the DAG at once (docs/design.md, "Streamed plans")."""
        from compound.planner.decompose import decompose_streamed

        model = self.settings.planner_model
        await self.store.set_planner_model(st.id, model)
        run = TaskRun(self, st, [], daily)
        run.sole = False  # not known until the plan is whole
        dag = GrowingDag(run.run_one, run.skip)
        arrivals = _Arrivals(self, st, run, dag)

        async def call(messages: list[Message], schema: dict[str, Any] | None,
                       on_delta: Any = None) -> Completion:
            return await self.calls.call(st, CallSpec(
                kind=CallKind.planner, subtask=None, tier=None, models=[model], messages=messages,
                max_tokens=self.settings.planner_max_tokens, json_schema=schema, on_delta=on_delta), daily=daily)

        warnings: list[str] = []
        runner = asyncio.ensure_future(dag.run())
        writer = asyncio.ensure_future(arrivals.write())
        try:
            try:
                plan = await decompose_streamed(call, st.prompt, max_subtasks=self.settings.max_subtasks,
                                                on_entry=arrivals.entry, hold=dag.hold, context=st.context,
                                                warnings=warnings, tools=self._catalogue(),
                                                steps=self.plugins.plugins.cards(),
                                                kinds=self.plugins.plugins.kinds())
            except (BudgetExceeded, PlanInvalid, ProviderError) as exc:
                arrivals.done()  # nothing was handed out: nothing runs
                await asyncio.gather(writer, runner)
                await self._plan_failed(st, exc)
                return None
            run.sole = len(plan.subtasks) == 1
            arrivals.whole(plan.subtasks)
            await writer
            await self.store.save_plan(st.id, reasoning=plan.reasoning, subtasks=[], prompt_versions=self.versions,
                                       status=TaskStatus.planned, warnings=warnings, size=len(plan.subtasks))
            await self.store.set_status_unless_ended(st.id, TaskStatus.executing)
            await runner
        finally:
            for fut in (writer, runner):
                if not fut.done():
                    fut.cancel()
            await asyncio.gather(writer, runner, return_exceptions=True)
        return run

    async def _plan_failed(self, st: TaskState, exc: BaseException) -> None:
        if isinstance(exc, BudgetExceeded):
            error, reason = f"could not plan within the budget of ${st.budget_usd:g}: {exc.message}", EndReason.budget
        elif isinstance(exc, PlanInvalid):
            error, reason = f"could not plan: {exc.message}", EndReason.failed_plan
        else:
            assert isinstance(exc, ProviderError)
            error, reason = f"could not plan: the planner model failed: {exc.message}", EndReason.failed_provider
        await self.store.set_status_unless_ended(st.id, TaskStatus.failed, error=error, reason=reason)

    async def _plan(self, st: TaskState, daily: float | None) -> list[SubState] | None:
        warnings: list[str] = []
        try:
            if st.plan_in is not None:
                plan = validate_plan(st.plan_in, max_subtasks=self.settings.max_subtasks,
                                     kinds=self.plugins.plugins.kinds())
            else:
                from compound.planner.decompose import decompose

                model = self.settings.planner_model
                await self.store.set_planner_model(st.id, model)
                # Planner calls paid for before a restart (the plan was not saved) are
                # answered from their ledger rows, in order, not sent again.
                paid = [] if st.status == TaskStatus.queued else await self._paid_planner_answers(st.id)
                call = self._planner_call(st, model, daily, paid)
                plan = await decompose(call, st.prompt, max_subtasks=self.settings.max_subtasks,
                                       context=st.context, warnings=warnings, tools=self._catalogue(),
                                       steps=self.plugins.plugins.cards(), kinds=self.plugins.plugins.kinds())
        except (BudgetExceeded, PlanInvalid, ProviderError) as exc:
            await self._plan_failed(st, exc)
            return None
        subs = self.subs(list(plan.subtasks), 0, 0, st.tier_models)
        if st.rerun_of is not None:
            subs = await self._reuse(st.rerun_of, subs)
        await self.store.save_plan(st.id, reasoning=plan.reasoning, subtasks=subs, prompt_versions=self.versions,
                                   status=TaskStatus.planned, warnings=warnings)
        return subs

    def _planner_call(self, st: TaskState, model: str, daily: float | None,
                      paid: list[Completion]) -> Callable[[list[Message], dict[str, Any] | None],
                                                          Awaitable[Completion]]:
        """The planner's call; answers paid for before a restart (the plan was not
        saved) are given back from their ledger rows, in order, not sent again."""

        async def call(messages: list[Message], schema: dict[str, Any] | None) -> Completion:
            if paid:
                return paid.pop(0)
            return await self.calls.call(st, CallSpec(
                kind=CallKind.planner, subtask=None, tier=None, models=[model], messages=messages,
                max_tokens=self.settings.planner_max_tokens, json_schema=schema), daily=daily)

        return call

    async def _plan_kept(self, st: TaskState, subs: list[SubState], daily: float | None) -> list[SubState] | None:
        """A task whose streamed plan was interrupted before it was whole (still
        `planning`, with the entries stored so far): the planner is asked for the whole
        plan again (an answer paid for before the restart is replayed), and the plan
        keeps the stored entries, or is cut to them (decompose_keeping). Entries that
        never started may take the new plan's version; the rest join them."""
        from compound.planner.decompose import decompose_keeping

        model = self.settings.planner_model
        call = self._planner_call(st, model, daily, await self._paid_planner_answers(st.id))
        kept = [_entry(s) for s in subs]
        warnings: list[str] = []
        plan = await decompose_keeping(call, st.prompt, kept=kept,
                                       hold=lambda i: subs[i].status == SubtaskStatus.pending,
                                       max_subtasks=self.settings.max_subtasks, context=st.context,
                                       warnings=warnings, tools=self._catalogue(),
                                       steps=self.plugins.plugins.cards(), kinds=self.plugins.plugins.kinds())
        out = list(subs)
        for i, got in enumerate(plan.subtasks[:len(subs)]):
            if not same(got, kept[i]):
                (sub,) = self.subs([got], i, 0)
                out[i] = await self.store.replace_pending(st.id, sub)
        rest = self.subs(list(plan.subtasks[len(subs):]), len(subs), 0)
        await self.store.save_plan(st.id, reasoning=plan.reasoning, subtasks=rest, prompt_versions=self.versions,
                                   status=TaskStatus.planned, warnings=warnings)
        return out + rest

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

    async def _finish(self, run: TaskRun) -> None:
        """Replanning rounds while they help, then the synthesis."""
        await self._replan(run)
        await self.calls.drain(run.st.id)  # every subtask's settlement committed before the task ends
        roots = sum(1 for i, e in run.ended.items() if e.cause is Cause.budget and e.root == i)
        budget_note = (f"budget of ${run.st.budget_usd:g} exhausted: {roots} subtask(s) skipped for budget"
                       if roots else None)
        await self._synthesize(run, budget_note)

    async def _replan(self, run: TaskRun) -> None:
        """At most COMPOUND_MAX_REPLANS rounds. A round runs when a subtask of the round
        before failed for good; it asks the planner for subtasks to add (finished ones
        are kept and never run again). A round none of whose additions completes ends
        replanning; one whose additions all complete answers for what it was called for."""
        st = run.st
        done_round = max((s.round for s in run.subs), default=0)
        while done_round < self.settings.max_replans:
            latest = [s for s in run.subs if s.round == done_round]
            if not any(run.status(s.index) == SubtaskStatus.failed for s in latest):
                return
            failed = [Failed(s.index, s.description, _why(run.status(s.index), run.final[s.index].error))
                      for s in latest if run.status(s.index) in (SubtaskStatus.failed, SubtaskStatus.skipped)
                      and (run.ended.get(s.index) is None or run.ended[s.index].cause is not Cause.budget)]
            round_ = done_round + 1
            reason = "; ".join(f"subtask {f.index}: {f.why[:200]}" for f in failed[:5])
            await self.store.add_subtasks(st.id, [], replan={"round": round_, "reason": reason})
            finished = [Finished(s.index, s.description, run.results[s.index]) for s in run.subs
                        if s.index in run.results]

            async def call(messages: list[Message], schema: dict[str, Any] | None) -> Completion:
                return await self.calls.call(st, CallSpec(
                    kind=CallKind.planner, subtask=None, tier=None, models=[self.settings.planner_model],
                    messages=messages, max_tokens=self.settings.planner_max_tokens, json_schema=schema),
                    daily=run.daily)

            try:
                added = await replan(call, st.prompt, context=st.context, finished=finished, failed=failed,
                                     next_index=len(run.subs), max_new=self.settings.max_subtasks)
            except (BudgetExceeded, ProviderError, PlanInvalid):
                return  # the round adds nothing: replanning ends
            if not added:
                return
            subs = self.subs(added, len(run.subs), round_)
            await self.store.add_subtasks(st.id, subs)
            for sub in subs:
                run.add(sub)
            run.sole = False
            await run.run_dag()
            if all(s.index in run.results for s in subs):
                run.answered.update(f.index for f in failed)
            elif not any(s.index in run.results for s in subs):
                return
            done_round = round_

    async def _synthesize(self, run: TaskRun, budget_note: str | None) -> None:
        st, subs, results, final = run.st, run.subs, run.results, run.final
        daily = run.daily
        done = [s for s in subs if s.index in results]
        missing = [(s.index, s.description, final[s.index].error or final[s.index].status) for s in subs
                   if s.index not in results and s.index not in run.answered]
        if not done:
            errors = "; ".join(f"subtask {i}: {why}" for i, _, why in missing[:5])
            await self.store.set_status_unless_ended(st.id, TaskStatus.failed,
                                        error=budget_note or f"no subtask completed: {errors}",
                                        reason=EndReason.budget if budget_note else EndReason.failed_subtasks)
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
            budget = isinstance(exc, BudgetExceeded)
            why = "budget" if budget else "provider error"
            await self.store.set_status_unless_ended(st.id, TaskStatus.partial, result=joined, error=(
                f"synthesis not run ({why}): {exc.message}; the result joins the subtask results"),
                reason=EndReason.budget if budget else EndReason.failed_provider)
            return
        if missing:
            await self.store.set_status_unless_ended(st.id, TaskStatus.partial, result=answer.text,
                                        error=budget_note or f"{len(missing)} of {len(subs)} subtasks did not complete",
                                        reason=EndReason.budget if budget_note else EndReason.failed_subtasks)
        else:
            await self.store.set_status_unless_ended(st.id, TaskStatus.completed, result=answer.text)


def _entry(sub: SubState) -> SubtaskIn:
    """A stored subtask as the plan entry it was made from."""
    deps: list[int | Dependency] = [Dependency(index=d, required=False) if d in sub.optional else d
                                    for d in sub.depends_on]
    return SubtaskIn(description=sub.description, tier_hint=sub.tier_hint, depends_on=deps, kind=sub.kind,
                     tools=list(sub.tools), tool=sub.tool, arguments=sub.arguments)
