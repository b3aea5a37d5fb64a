"""The Executor: a task's whole life (plan → run the DAG → synthesize), from and to
the store. `run_task` is idempotent: it reads the task's state and goes on from there,
so a restart resumes what was running and a completed subtask is never called again."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from compound.core.errors import BudgetExceeded, Conflict, NotFound, PlanInvalid, ProviderError, ProviderTimeout
from compound.core.logging import get_logger
from compound.core.settings import Settings
from compound.executor.budget import worst_case_usd
from compound.executor.hooks import CallObserver
from compound.executor.scheduler import PriorityLimiter, run_dag
from compound.llm import collect
from compound.llm.base import Completion, LLMClient, Message, Price
from compound.planner.plan import PlanIn
from compound.planner.router import route
from compound.planner.validate import is_clean_text, validate_plan
from compound.prompts import render, versions
from compound.store import runs
from compound.store.fastwrite import FastWriter
from compound.store.models import (
    TERMINAL_TASK,
    CallKind,
    CallStatus,
    SubtaskStatus,
    TaskStatus,
)

log = get_logger("compound.executor")
Sleep = Callable[[float], Awaitable[None]]


class ModelLimit(Protocol):
    """One model's cap on calls in flight: asyncio.Semaphore, or a cluster-wide one."""

    async def acquire(self) -> bool: ...
    def release(self) -> None: ...


class ModelSlots(Protocol):
    """Where per-model caps come from when they must hold beyond this process
    (compound.store.pg_slots); None from limit_for means the model has no cap."""

    def limit_for(self, model: str) -> ModelLimit | None: ...


class _Canceled(Exception):
    """The task was canceled while we were waiting on something."""


class Executor:
    """Runs tasks in this process, bounded by COMPOUND_MAX_CONCURRENCY calls in flight
    across all tasks (served by priority), plus per-model limits from the config."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        client: LLMClient,
        price_of: Callable[[str], Price] | None = None,
        observers: Sequence[CallObserver] = (),
        sleep: Sleep = asyncio.sleep,
        model_slots: ModelSlots | None = None,
    ) -> None:
        self.settings = settings
        self.model_slots = model_slots
        self.engine = engine
        self.client = client
        if price_of is None:
            from compound.llm.pricing import price_of as _price_of

            self.price_of: Callable[[str], Price] = lambda m: _price_of(m, settings)
        else:
            self.price_of = price_of
        self.observers = list(observers)
        # (task id, text) per streamed piece of a synthesis answer; set by a front door
        # that streams answers. None: the synthesis call is not streamed. A retried or
        # fallen-back call streams again from its start.
        self.on_synthesis_delta: Callable[[str, str], object] | None = None
        self.sleep = sleep
        self.limiter = PriorityLimiter(settings.max_concurrency)
        self._model_limits: dict[str, asyncio.Semaphore] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._versions = versions()
        self.writer = FastWriter(engine)
        self._checkpointer: asyncio.Task[None] | None = None
        self._pending_reserves: list[tuple[str, dict[str, Any], asyncio.Future[Any]]] = []
        self._daily: dict[str, float | None] = {}
        self._stopping = False

    # lifecycle ----------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Resume every task that was not terminal when the last process stopped."""
        self._ensure_checkpointer()
        ids = await asyncio.to_thread(runs.unfinished_task_ids, self.engine)
        for task_id in ids:
            self.submit(task_id)
        if ids:
            log.info("resuming tasks", count=len(ids))
        return ids

    def _ensure_checkpointer(self) -> None:
        if self.writer.sqlite and self._checkpointer is None:
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_loop())

    async def _checkpoint_loop(self, every_s: float = 0.5) -> None:
        from compound.store.fastwrite import checkpoint

        seen = 0
        while True:
            await asyncio.sleep(every_s)
            if self.writer.commits != seen:
                seen = self.writer.commits
                try:
                    await asyncio.to_thread(checkpoint, self.engine)
                except Exception:  # a busy database: the next round will do it
                    log.warning("checkpoint failed; will retry")

    async def stop(self) -> None:
        self._stopping = True
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.writer.close()

    def submit(self, task_id: str) -> None:
        """Run the task in the background (no-op when it already runs here)."""
        current = self._running.get(task_id)
        if current is not None and not current.done():
            return
        task = asyncio.get_running_loop().create_task(self._guarded(task_id))
        self._running[task_id] = task

    async def _guarded(self, task_id: str) -> None:
        try:
            await self.run_task(task_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never lose a task silently: record why it stopped
            log.exception("task crashed", task_id=task_id)
            try:
                runs.recover(self.engine, task_id)  # its open calls count at their worst case
                runs.set_status(self.writer, task_id, TaskStatus.failed,
                                error=f"internal error: {type(exc).__name__}")
            except Exception:  # pragma: no cover - the store itself is gone
                log.exception("could not record the failure", task_id=task_id)
        finally:
            if self._running.get(task_id) is asyncio.current_task():
                self._running.pop(task_id, None)

    async def run_here(self, task_id: str) -> None:
        """Run the task as submit() does and return when it stops (a queue worker's
        entry point): cancel() reaches it, and a cancel is an ordinary end, not an error."""
        self.submit(task_id)
        task = self._running.get(task_id)
        if task is None:
            return
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._stopping or (me is not None and me.cancelling()):
                raise  # this worker is stopping: the task stays for another to resume
            # else cancel() stopped the task and finished it as canceled

    def is_running(self, task_id: str) -> bool:
        running = self._running.get(task_id)
        return running is not None and not running.done()

    async def abandon(self, task_id: str) -> None:
        """Stop this process's run of a task that ended elsewhere (canceled by an API)."""
        running = self._running.get(task_id)
        if running is not None and not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    async def wait(self, task_id: str, timeout: float | None = None) -> str:
        """Until the task is terminal; returns its status."""
        return await self._wait_for(task_id, lambda st: st.status in TERMINAL_TASK, timeout)

    async def wait_planned(self, task_id: str, timeout: float | None = None) -> str:
        """Until the task has a plan (or ended without one); returns its status."""
        return await self._wait_for(
            task_id,
            lambda st: st.status in TERMINAL_TASK or st.status in (TaskStatus.planned, TaskStatus.executing),
            timeout,
        )

    async def _wait_for(self, task_id: str, done: Callable[[runs.TaskState], bool],
                        timeout: float | None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = runs.load(self.engine, task_id)
            if st is None:
                raise NotFound(f"no task with id {task_id!r}")
            if done(st):
                return st.status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {st.status} after {timeout}s")
            await asyncio.sleep(0.02)

    async def cancel(self, task_id: str) -> None:
        status = runs.request_cancel(self.engine, task_id)
        if status is None:
            raise NotFound(f"no task with id {task_id!r}")
        if status in TERMINAL_TASK:
            raise Conflict(f"task {task_id} is already {status}; only a running task can be canceled")
        running = self._running.get(task_id)
        if running is not None and not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            st = runs.load(self.engine, task_id)
            if st is not None and st.status in TERMINAL_TASK:
                return
        await self._finish_canceled(task_id)

    async def approve(self, task_id: str) -> None:
        st = runs.load(self.engine, task_id)
        if st is None:
            raise NotFound(f"no task with id {task_id!r}")
        if st.status != TaskStatus.planned or st.approve:
            raise Conflict(f"task {task_id} is {st.status}; only a planned task waiting for approval can be approved")
        runs.set_approved(self.engine, task_id)
        self.submit(task_id)

    async def _finish_canceled(self, task_id: str) -> None:
        st = runs.load(self.engine, task_id)
        if st is None or st.status in TERMINAL_TASK:
            return
        runs.cancel_open(self.engine, task_id, st.subtasks)
        runs.set_status(self.writer, task_id, TaskStatus.canceled, error="canceled by request")

    # one task -------------------------------------------------------------------------

    async def run_task(self, task_id: str) -> None:
        """Take the task from whatever state the store has it in to a terminal state (or
        to `planned`, when it waits for approval)."""
        try:
            await self._run_task(task_id)
        finally:
            self._daily.pop(task_id, None)

    async def _run_task(self, task_id: str) -> None:
        self._ensure_checkpointer()
        st = runs.load(self.engine, task_id)
        if st is None:
            raise NotFound(f"no task with id {task_id!r}")
        if st.status in TERMINAL_TASK:
            return
        if st.cancel_requested:
            await self._finish_canceled(task_id)
            return
        if st.status != TaskStatus.queued:  # a queued task has never sent a call
            runs.recover(self.engine, task_id)  # a previous process's open calls are lost
            st = runs.load(self.engine, task_id)
            assert st is not None
        try:
            if not st.subtasks:
                subs = await self._plan(st)
                if subs is None:
                    return
                st.subtasks, st.status = subs, TaskStatus.planned
            if not st.approve:
                if st.status != TaskStatus.planned:
                    runs.set_status(self.writer, task_id, TaskStatus.planned)
                return
            await self._execute(st)
        except asyncio.CancelledError:
            # cancel() (or a shutdown): cancel() finishes the task as canceled; a shutdown
            # leaves it for the next start to resume.
            st2 = runs.load(self.engine, task_id)
            if st2 is not None and st2.cancel_requested:
                await asyncio.shield(self._finish_canceled(task_id))
            raise

    async def _plan(self, st: runs.TaskState) -> list[runs.SubState] | None:
        runs.set_status(self.writer, st.id, TaskStatus.planning)
        warnings: list[str] = []
        try:
            if st.plan_in is not None:
                plan = validate_plan(st.plan_in, max_subtasks=self.settings.max_subtasks)
            else:
                from compound.planner.decompose import decompose

                model = self.settings.planner_model
                runs.set_planner_model(self.engine, st.id, model)

                async def call(messages: list[Message], schema: dict[str, Any] | None) -> Completion:
                    return await self._call(st, kind=CallKind.planner, sub=None, tier=None,
                                            models=[model], messages=messages,
                                            max_tokens=self.settings.planner_max_tokens,
                                            json_schema=schema)

                plan = await decompose(call, st.prompt, max_subtasks=self.settings.max_subtasks,
                                       context=st.context, warnings=warnings)
        except BudgetExceeded as exc:
            runs.set_status(self.writer, st.id, TaskStatus.failed,
                            error=f"could not plan within the budget of ${st.budget_usd:g}: {exc.message}")
            return None
        except PlanInvalid as exc:
            runs.set_status(self.writer, st.id, TaskStatus.failed, error=f"could not plan: {exc.message}")
            return None
        except ProviderError as exc:
            runs.set_status(self.writer, st.id, TaskStatus.failed,
                            error=f"could not plan: the planner model failed: {exc.message}")
            return None
        subs = [
            runs.SubState(index=r.index, description=plan.subtasks[r.index].description,
                          tier_hint=r.tier_hint, tier_assigned=r.tier_assigned, models=r.models,
                          depends_on=list(plan.subtasks[r.index].depends_on),
                          status=SubtaskStatus.pending, model=r.models[0])
            for r in route(plan, self.settings)
        ]
        runs.save_plan(self.writer, st.id, reasoning=plan.reasoning,
                       subs=subs,
                       prompt_versions=self._versions, planned_status=TaskStatus.planned,
                       warnings=warnings)
        return subs

    async def _execute(self, st: runs.TaskState) -> None:
        if st.status != TaskStatus.executing:
            runs.set_status(self.writer, st.id, TaskStatus.executing)
        subs = st.subtasks
        budget_skips: list[int] = []

        async def run_one(i: int) -> str | None:
            sub = subs[i]
            deps = [(d, subs[d].result or "") for d in sub.depends_on]
            messages = render("subtask", request=st.prompt, description=sub.description,
                              dependencies=deps)
            try:
                await self._call(st, kind=CallKind.subtask, sub=sub, tier=sub.tier_assigned,
                                 models=sub.models or self.settings.tier_models(sub.tier_assigned),
                                 messages=messages, max_tokens=self.settings.max_tokens)
                return None
            except BudgetExceeded as exc:
                sub.status = SubtaskStatus.skipped
                sub.error = f"skipped: budget exhausted ({exc.message})"
                budget_skips.append(i)
                runs.subtask_transition(self.writer, st.id, sub, finished=True)
                return "was skipped (budget exhausted)"
            except ProviderError as exc:
                sub.status = SubtaskStatus.failed
                sub.error = exc.message
                runs.subtask_transition(self.writer, st.id, sub, finished=True)
                return "failed"

        def skip(i: int, reason: str) -> None:
            sub = subs[i]
            sub.status = SubtaskStatus.skipped
            sub.error = reason
            runs.subtask_transition(self.writer, st.id, sub, finished=True)

        await run_dag([s.depends_on for s in subs], [s.status for s in subs], run_one, skip)
        await self._synthesize(st, subs, budget_skips)

    async def _synthesize(self, st: runs.TaskState, subs: list[runs.SubState],
                          budget_skips: list[int]) -> None:
        done = [s for s in subs if s.status == SubtaskStatus.completed]
        missing = [(s.index, s.description, s.error or s.status) for s in subs
                   if s.status != SubtaskStatus.completed]
        budget_note = (f"budget of ${st.budget_usd:g} exhausted: {len(budget_skips)} subtask(s) "
                       "skipped for budget" if budget_skips or any(
                           "budget" in (s.error or "") for s in subs) else None)
        if not done:
            errors = "; ".join(f"subtask {i}: {why}" for i, _, why in missing[:5])
            runs.set_status(self.writer, st.id, TaskStatus.failed,
                            error=budget_note or f"no subtask completed: {errors}")
            return
        tier = self.settings.synthesis_tier
        messages = render("synthesize", request=st.prompt, context=st.context,
                          results=[(s.index, s.description, s.result or "") for s in done],
                          missing=missing)
        max_tokens = self.settings.synthesis_max_tokens
        if st.answer_max_tokens is not None:  # a chat client's max_tokens bounds the answer
            max_tokens = min(max_tokens, st.answer_max_tokens)
        try:
            answer = await self._call(st, kind=CallKind.synthesis, sub=None, tier=tier,
                                      models=self.settings.tier_models(tier), messages=messages,
                                      max_tokens=max_tokens)
        except (BudgetExceeded, ProviderError) as exc:
            joined = "\n\n".join(f"[{s.index}] {s.result}" for s in done)
            why = "budget" if isinstance(exc, BudgetExceeded) else "provider error"
            runs.set_status(self.writer, st.id, TaskStatus.partial, result=joined,
                            error=f"synthesis not run ({why}): {exc.message}; the result joins the subtask results")
            return
        if missing:
            runs.set_status(self.writer, st.id, TaskStatus.partial, result=answer.text,
                            error=budget_note or f"{len(missing)} of {len(subs)} subtasks did not complete")
        else:
            runs.set_status(self.writer, st.id, TaskStatus.completed, result=answer.text)

    # one model call, with budget, retries and fallbacks -----------------------------

    def _model_limit(self, model: str) -> ModelLimit | None:
        if self.model_slots is not None:
            return self.model_slots.limit_for(model)
        limit = self.settings.model_config_for(model).max_concurrency
        if limit is None:
            return None
        sem = self._model_limits.get(model)
        if sem is None:
            sem = self._model_limits[model] = asyncio.Semaphore(limit)
        return sem

    async def _call(self, st: runs.TaskState, *, kind: str, sub: runs.SubState | None,
                    tier: int | None, models: list[str], messages: list[Message],
                    max_tokens: int, json_schema: dict[str, Any] | None = None) -> Completion:
        """Reserve → send → settle, retried on transient errors with backoff (Retry-After
        wins when longer), then the next model of the list. Raises BudgetExceeded when a
        call's worst case does not fit, ProviderError when every model failed."""
        if st.id not in self._daily:
            self._daily[st.id] = runs.user_daily_budget(self.engine, st.user_id,
                                                        self.settings.user_daily_budget_usd)
        daily = self._daily[st.id]
        attempt = sub.attempts if sub is not None else 0
        last: ProviderError | None = None
        for model in models:
            mt = self.settings.model_config_for(model).max_tokens or max_tokens
            amount = worst_case_usd(messages, mt, self.price_of(model))

            async def once(model: str = model, mt: int = mt, amount: float = amount) -> Completion:
                nonlocal attempt
                attempt += 1
                return await self._attempt(st, kind=kind, sub=sub, tier=tier, model=model,
                                           attempt=attempt, amount=amount, daily=daily,
                                           messages=messages, max_tokens=mt, json_schema=json_schema)

            # The first attempt goes straight out: tenacity's machinery costs ~85 µs a
            # call, so it is only set up once a call has failed transiently.
            try:
                return await once()
            except ProviderError as exc:
                last = exc
                if not exc.transient:
                    raise
            if self.settings.max_attempts > 1:
                await self.sleep(self._wait_s(1, last))
                retrying = AsyncRetrying(
                    retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and bool(e.transient)),
                    stop=stop_after_attempt(self.settings.max_attempts - 1),
                    wait=lambda state: self._wait_s(state.attempt_number + 1,
                                                    state.outcome.exception() if state.outcome else None),
                    sleep=self.sleep,
                    reraise=True,
                )
                try:
                    async for attempt_state in retrying:
                        with attempt_state:
                            return await once()
                except ProviderError as exc:
                    last = exc
                    if not exc.transient:
                        raise
            log.warning("model exhausted its retries; falling back", model=model, kind=kind)
        assert last is not None
        raise last

    def _wait_s(self, failures: int, exc: BaseException | None) -> float:
        """Exponential backoff with jitter after the n-th failure; a provider's
        Retry-After wins when longer (capped at max(RETRY_MAX_WAIT_S, 120 s))."""
        initial = self.settings.retry_initial_wait_s
        backoff = min(self.settings.retry_max_wait_s, initial * 2 ** (failures - 1)) + random.uniform(0, initial)
        after = float(getattr(exc, "retry_after_s", None) or 0.0)
        return float(max(backoff, min(after, max(self.settings.retry_max_wait_s, 120.0))))

    async def _attempt(self, st: runs.TaskState, *, kind: str, sub: runs.SubState | None,
                       tier: int | None, model: str, attempt: int, amount: float,
                       daily: float | None, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None) -> Completion:
        sem = self._model_limit(model)
        async with self.limiter.slot(st.priority):
            if sem is not None:
                await sem.acquire()
            try:
                res = await self._reserve(st.id, user_id=st.user_id, kind=kind, subtask=sub,
                                   tier=tier, model=model, attempt=attempt, amount=amount,
                                   daily_budget=daily)
                if res is None:
                    left = self._left(st.id)
                    raise BudgetExceeded(
                        f"a {kind} call to {model} may cost up to ${amount:.6f}; ${left:.6f} of the "
                        "budget is left",
                        needed_usd=amount, remaining_usd=left)
                for o in self.observers:
                    o.call_started(model=model, kind=kind)
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(self.settings.call_timeout_s):
                        hook = self.on_synthesis_delta if kind == CallKind.synthesis else None
                        if hook is None:
                            out = await self.client.complete(model=model, messages=messages,
                                                             max_tokens=max_tokens, json_schema=json_schema,
                                                             timeout_s=self.settings.call_timeout_s)
                        else:
                            out = await collect(self.client.stream(
                                model=model, messages=messages, max_tokens=max_tokens, json_schema=json_schema,
                                timeout_s=self.settings.call_timeout_s), lambda text: hook(st.id, text))
                except asyncio.CancelledError:
                    raise  # cancel_open()/recover() settle the open row at its reservation
                except (ProviderError, TimeoutError) as exc:
                    err = exc if isinstance(exc, ProviderError) else ProviderError(
                        f"{model}: no answer within {self.settings.call_timeout_s}s", status=408,
                        model=model, transient=True)
                    timed_out = err.status == 408 or isinstance(err, ProviderTimeout)
                    # An error answer is not billed; a timed-out call may have been: count
                    # it at its worst case, as a crash would.
                    cost = amount if timed_out else 0.0
                    runs.settle(self.writer, st.id, res,
                                status=CallStatus.lost if timed_out else CallStatus.error,
                                cost=cost, latency_ms=(time.perf_counter() - started) * 1000,
                                error=err.message[:500], subtask=sub)
                    self._observe(model, kind, tier, "error", 0, 0, cost, time.perf_counter() - started)
                    raise err from None
                if not is_clean_text(out.text):  # a model's NUL or lone surrogate must not break the store
                    out = dataclasses.replace(out, text=out.text.replace("\x00", "\ufffd")
                                              .encode("utf-8", "replace").decode("utf-8"))
                u = out.usage
                complete_with = out.text if (sub is not None and kind == CallKind.subtask) else None
                runs.settle(self.writer, st.id, res, status=CallStatus.ok, cost=out.cost_usd,
                            input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                            cache_read=u.cache_read_tokens, cache_write=u.cache_write_tokens,
                            latency_ms=out.latency_s * 1000 or (time.perf_counter() - started) * 1000,
                            subtask=sub, complete_with=complete_with)
                self._observe(model, kind, tier, "ok", u.input_tokens, u.output_tokens, out.cost_usd,
                              time.perf_counter() - started)
                return out
            finally:
                if sem is not None:
                    sem.release()

    def _observe(self, model: str, kind: str, tier: int | None, status: str, inp: int, out: int,
                 cost: float, latency: float) -> None:
        for o in self.observers:
            try:
                o.call_finished(model=model, kind=kind, tier=tier, status=status, input_tokens=inp,
                                output_tokens=out, cost_usd=cost, latency_s=latency)
            except Exception:  # an observer must never break a run
                log.exception("observer failed")

    async def _reserve(self, task_id: str, **kw: Any) -> runs.Reservation | None:
        """Reserve a call's worst case. Reservations asked for in the same turn of the
        event loop (a fan-out becoming ready at once) share one transaction."""
        fut: asyncio.Future[runs.Reservation | runs.DailyRefusal | None] = \
            asyncio.get_running_loop().create_future()
        self._pending_reserves.append((task_id, kw, fut))
        if len(self._pending_reserves) == 1:
            asyncio.get_running_loop().call_soon(self._flush_reserves)
        got = await fut
        if isinstance(got, runs.DailyRefusal):
            raise BudgetExceeded(
                f"the user's daily budget of ${kw['daily_budget']:g} is spent (${got.spent:.6f} "
                f"today); a {kw['kind']} call to {kw['model']} may cost up to ${kw['amount']:.6f}",
                needed_usd=kw["amount"], remaining_usd=max(0.0, kw["daily_budget"] - got.spent),
            )
        return got

    def _flush_reserves(self) -> None:
        batch, self._pending_reserves = self._pending_reserves, []
        live = [(t, kw, fut) for t, kw, fut in batch if not fut.cancelled()]
        results: list[runs.Reservation | runs.DailyRefusal | None] = [None] * len(live)
        groups: dict[str, list[int]] = {}
        for k, (task_id, kw, _) in enumerate(live):
            bulk = kw["subtask"] is not None and (kw["daily_budget"] is None or kw["user_id"] is None)
            groups.setdefault(task_id if bulk else f"\0{k}", []).append(k)
        try:
            with self.writer.tx() as cur:
                for members in groups.values():
                    task_id = live[members[0]][0]
                    if len(members) > 1:
                        many = runs.reserve_many(self.writer, cur, task_id, [live[k][1] for k in members])
                        if many is not None:
                            for k, res in zip(members, many, strict=True):
                                results[k] = res
                            continue
                    for k in members:  # one at a time: some may fit where all did not
                        results[k] = runs.reserve_in(self.writer, cur, task_id, **live[k][1])
        except Exception as exc:  # the store failed: every caller hears it
            for _, _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, _, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    def _left(self, task_id: str) -> float:
        st = runs.load(self.engine, task_id)
        return 0.0 if st is None else max(0.0, st.budget_usd - st.total_cost_usd - st.reserved_usd)


__all__ = ["Executor", "PlanIn"]
