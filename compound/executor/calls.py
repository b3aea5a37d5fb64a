"""Model calls: reserve → send → settle, retried on transient errors, then the next
model of the chain. Each attempt has its own ledger row, booked as executor/booking.py
says. A fallback chain that fails raises FallbackExhausted holding every model's error."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from compound.core.errors import (
    BudgetExceeded,
    CallTimedOut,
    FallbackExhausted,
    ProviderError,
)
from compound.core.logging import get_logger
from compound.core.money import Price
from compound.core.settings import Settings
from compound.executor import booking
from compound.executor.answers import AnswerStreams
from compound.executor.callspec import AttemptCounter as AttemptCounter  # re-exported
from compound.executor.callspec import CallSpec as CallSpec  # re-exported
from compound.executor.callspec import worst_case_of
from compound.executor.hooks import CallObserver
from compound.executor.scheduler import PriorityLimiter
from compound.llm import collect
from compound.llm.base import Completion, LLMClient
from compound.planner.validate import is_clean_text
from compound.store.base import RunStore
from compound.store.models import CallKind
from compound.store.values import (
    BudgetRefusal,
    DailyRefusal,
    Reservation,
    ReserveOutcome,
    ReserveRequest,
    TaskState,
)

log = get_logger("compound.executor")
Sleep = Callable[[float], Awaitable[None]]


def clean_text(text: str) -> str:
    """A model's text safe for the store: NUL and lone surrogates replaced, character
    by character (so cleaning the pieces of a text and joining them gives the same)."""
    if is_clean_text(text):
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class ModelLimit(Protocol):
    """One model's cap on calls in flight: asyncio.Semaphore, or a cluster-wide one."""

    async def acquire(self) -> bool: ...
    def release(self) -> None: ...


class ModelSlots(Protocol):
    """Where per-model caps come from when they must hold beyond this process
    (compound.store.pg_slots); None from limit_for means the model has no cap."""

    def limit_for(self, model: str) -> ModelLimit | None: ...


class ModelCalls:
    """Runs calls under the process-wide limiter (by priority) and per-model limits,
    with every attempt reserved before it is sent and settled after."""

    def __init__(self, *, settings: Settings, store: RunStore, client: LLMClient,
                 price_of: Callable[[str], Price], observers: Sequence[CallObserver], sleep: Sleep,
                 model_slots: ModelSlots | None = None) -> None:
        self.settings = settings
        self.model_slots = model_slots
        # Where a streamed synthesis answer's pieces go (executor/answers.py); None: the
        # synthesis call is not streamed. A retried or fallen-back call streams again
        # from its start, as a new attempt.
        self.answers: AnswerStreams | None = None
        self.store = store
        self.client = client
        self.price_of = price_of
        self.observers = list(observers)
        self.sleep = sleep
        self.limiter = PriorityLimiter(settings.max_concurrency)
        self._model_limits: dict[str, asyncio.Semaphore] = {}
        self._pending: list[tuple[ReserveRequest, asyncio.Future[ReserveOutcome]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._unsettled: dict[str, set[asyncio.Future[Any]]] = {}
        self._failed: dict[str, BaseException] = {}
        # Tasks whose answer call has returned: a cancel lets them finish (the answer
        # exists and is paid for), and is then told the task completed first.
        self.answered: set[str] = set()

    async def call(self, st: TaskState, spec: CallSpec, *, daily: float | None,
                   on_attempt: Callable[[int], None] | None = None) -> Completion:
        """Raises BudgetExceeded when a call's worst case does not fit; the model's
        ProviderError when one model was tried; FallbackExhausted when several were.
        `on_attempt` hears each attempt's number (a subtask's calls count on from it)."""
        attempt = spec.attempts_before if spec.counter is None else spec.counter.n
        errors: list[ProviderError] = []
        for model in spec.models:
            mt = self.settings.model_config_for(model).max_tokens or spec.max_tokens
            amount = worst_case_of(spec, mt, self.price_of(model))

            async def once(model: str = model, mt: int = mt, amount: float = amount) -> Completion:
                nonlocal attempt
                attempt += 1
                if spec.counter is not None:
                    spec.counter.n = attempt
                if on_attempt is not None:
                    on_attempt(attempt)
                return await self._attempt(st, spec, model=model, attempt=attempt, amount=amount, daily=daily,
                                           max_tokens=mt)

            try:
                return await self._with_retries(once)
            except ProviderError as exc:
                errors.append(exc)
                if not exc.transient:
                    break
            log.warning("model exhausted its retries; falling back", model=model, kind=spec.kind)
        if not errors:
            raise ProviderError(f"no model to call for this {spec.kind} call", transient=False)
        if len(errors) == 1:
            raise errors[0]
        raise FallbackExhausted(errors)

    async def _with_retries(self, once: Callable[[], Awaitable[Completion]]) -> Completion:
        # The first attempt goes straight out: tenacity's machinery costs ~85 µs a
        # call, so it is only set up once a call has failed transiently.
        try:
            return await once()
        except ProviderError as exc:
            if not exc.transient or self.settings.max_attempts <= 1:
                raise
            first = exc
        await self.sleep(self._wait_s(1, first))
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and bool(e.transient)),
            stop=stop_after_attempt(self.settings.max_attempts - 1),
            wait=lambda state: self._wait_s(state.attempt_number + 1,
                                            state.outcome.exception() if state.outcome else None),
            sleep=self.sleep,
            reraise=True,
        )
        async for attempt_state in retrying:
            with attempt_state:
                return await once()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _wait_s(self, failures: int, exc: BaseException | None) -> float:
        """Exponential backoff with jitter after the n-th failure; a provider's
        Retry-After wins when longer (capped at max(RETRY_MAX_WAIT_S, 120 s))."""
        initial = self.settings.retry_initial_wait_s
        backoff = min(self.settings.retry_max_wait_s, initial * 2 ** (failures - 1)) + random.uniform(0, initial)
        after = float(getattr(exc, "retry_after_s", None) or 0.0)
        return float(max(backoff, min(after, max(self.settings.retry_max_wait_s, 120.0))))

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

    async def _attempt(self, st: TaskState, spec: CallSpec, *, model: str, attempt: int, amount: float,
                       daily: float | None, max_tokens: int) -> Completion:
        """A slot (the process-wide limiter by the task's priority, then the model's own
        cap), the reservation, the call; the slot is given back as soon as the provider
        has answered or failed, before the settlement commits."""
        slot = _Slot(self.limiter, self._model_limit(model))
        try:
            await slot.take(st.priority)
            res = await self._reserve(ReserveRequest(
                task_id=st.id, user_id=st.user_id, kind=spec.kind, subtask=spec.subtask, tier=spec.tier,
                model=model, attempt=attempt, amount=amount, daily_budget=daily))
            return await self._send(st, spec, res, model=model, max_tokens=max_tokens, attempt=attempt,
                                    slot=slot)
        finally:
            slot.give_back()

    async def _send(self, st: TaskState, spec: CallSpec, res: Reservation, *, model: str,
                    max_tokens: int, attempt: int, slot: _Slot) -> Completion:
        for o in self.observers:
            o.call_started(model=model, kind=spec.kind)
        started = time.perf_counter()
        timeout = self.settings.call_timeout_s
        received: list[str] = []  # a streamed answer's text so far
        try:
            async with asyncio.timeout(timeout):
                out = await self._receive(st, spec, model=model, max_tokens=max_tokens, attempt=attempt,
                                          timeout=timeout, received=received)
        except asyncio.CancelledError:
            # Booked by what is known (booking.cut_short); the task's end waits for it (quiesce).
            self.pipeline(st.id, self.store.settle(st.id, res, spec.subtask, booking.cut_short(
                spec, res, self.price_of(model), received=received, elapsed_s=time.perf_counter() - started)))
            raise
        except (ProviderError, TimeoutError) as exc:
            slot.give_back()
            err = await self._settle_failed(st, spec, res, exc, model=model, timeout=timeout, started=started)
            raise err from None
        slot.give_back()
        return await self._settle_ok(st, spec, res, out, model=model, started=started)

    async def _receive(self, st: TaskState, spec: CallSpec, *, model: str, max_tokens: int, attempt: int,
                       timeout: float, received: list[str]) -> Completion:
        """The model's answer: a tool turn, or streamed to spec.on_delta (a streamed plan),
        or streamed to the task's answer listeners, or in one piece."""
        # Streamed only when someone listens as it starts (a door's client): a
        # listener that comes later gets the rest of the answer at the task's end.
        answers = self.answers if spec.answer else None
        if spec.tools:
            return await self.client.complete(model=model, messages=spec.messages, max_tokens=max_tokens,
                                              json_schema=spec.json_schema, timeout_s=timeout,
                                              tools=spec.tools, tool_choice=spec.tool_choice)
        if spec.on_delta is not None:
            on_delta = spec.on_delta
            return await collect(self.client.stream(
                model=model, messages=spec.messages, max_tokens=max_tokens,
                json_schema=spec.json_schema, timeout_s=timeout),
                lambda text: on_delta(attempt, text))
        if answers is None or not answers.listening(st.id):
            return await self.client.complete(model=model, messages=spec.messages, max_tokens=max_tokens,
                                              json_schema=spec.json_schema, timeout_s=timeout)
        answers.begin(st.id, attempt)

        def piece(text: str) -> None:
            received.append(text)
            # each piece cleaned as the whole text is in _settle_ok, so the pieces
            # join to exactly the stored answer
            answers.delta(st.id, attempt, clean_text(text))

        try:
            return await collect(self.client.stream(
                model=model, messages=spec.messages, max_tokens=max_tokens,
                json_schema=spec.json_schema, timeout_s=timeout), piece)
        finally:
            answers.end(st.id, attempt)

    async def _settle_failed(self, st: TaskState, spec: CallSpec, res: Reservation, exc: Exception, *,
                             model: str, timeout: float, started: float) -> ProviderError:
        """Books a failed attempt (booking.failed) and gives the error to raise."""
        err = exc if isinstance(exc, ProviderError) else CallTimedOut(model, timeout)
        elapsed = time.perf_counter() - started
        booked = booking.failed(err, res, elapsed_s=elapsed)
        await self.store.settle(st.id, res, spec.subtask, booked)
        self._observe(model, spec, "error", 0, 0, booked.cost_usd, elapsed)
        return err

    async def _settle_ok(self, st: TaskState, spec: CallSpec, res: Reservation, out: Completion, *,
                         model: str, started: float) -> Completion:
        """Books an answered attempt at its cost (with what it completes, in the same
        write) and gives the answer, its text made safe for the store."""
        if spec.answer:
            self.answered.add(st.id)
        if not is_clean_text(out.text):  # a model's NUL or lone surrogate must not break the store
            out = dataclasses.replace(out, text=clean_text(out.text))
        u = out.usage
        elapsed = time.perf_counter() - started
        settle = self.store.settle(st.id, res, spec.subtask, booking.answered(spec, out, elapsed_s=elapsed))
        if spec.kind == CallKind.subtask and not spec.turn:
            # a dependent's reservation (awaited before its call is sent) commits after this
            await self.write_behind(st.id, settle)
        else:
            await settle
        self._observe(model, spec, "ok", u.input_tokens, u.output_tokens, out.cost_usd, elapsed)
        return out

    async def quiesce(self, task_id: str) -> None:
        """Until every reservation being committed and every settlement of the task in
        flight has committed (a cancel waits for this before it closes the task's
        books, so nothing it reserved is left open or counted twice)."""
        if self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)
        pending = self._unsettled.get(task_id)
        if pending:
            await asyncio.gather(*list(pending), return_exceptions=True)
        self._failed.pop(task_id, None)

    async def write_behind(self, task_id: str, write: Awaitable[Any]) -> None:
        """Pipeline the write where the store commits writes in the order asked (every
        later write of this process commits after it); await it where it does not."""
        if self.store.ordered_writes:
            self.pipeline(task_id, write)
        else:
            await write

    def pipeline(self, task_id: str, settle: Awaitable[Any]) -> None:
        """Commit a write of the task's without waiting for it (a store with ordered
        writes commits every later write after it); the task's end waits for it
        (drain), a cancel too (quiesce), and a failure fails the task there."""
        fut = asyncio.ensure_future(settle)
        pending = self._unsettled.setdefault(task_id, set())
        pending.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            pending.discard(f)
            if not pending and self._unsettled.get(task_id) is pending:
                del self._unsettled[task_id]
            if not f.cancelled() and f.exception() is not None:
                self._failed.setdefault(task_id, f.exception())  # type: ignore[arg-type]

        fut.add_done_callback(done)

    async def drain(self, task_id: str) -> None:
        """Until every pipelined settlement of the task committed; raises the first
        that failed (the task then fails: its accounting could not be written)."""
        pending = self._unsettled.get(task_id)
        if pending:
            await asyncio.gather(*list(pending), return_exceptions=True)
        failed = self._failed.pop(task_id, None)
        if failed is not None:
            raise failed

    def _observe(self, model: str, spec: CallSpec, status: str, inp: int, out: int, cost: float,
                 latency: float) -> None:
        for o in self.observers:
            try:
                o.call_finished(model=model, kind=spec.kind, tier=spec.tier, status=status, input_tokens=inp,
                                output_tokens=out, cost_usd=cost, latency_s=latency)
            except Exception:  # an observer must never break a run
                log.exception("observer failed")

    async def _reserve(self, r: ReserveRequest) -> Reservation:
        """Reserve a call's worst case, or raise BudgetExceeded. Reservations asked for
        in the same turn of the event loop (a fan-out becoming ready at once) go to the
        store together, as one transaction."""
        fut: asyncio.Future[ReserveOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((r, fut))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        try:
            got = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # reserved, then canceled before it was sent
                self._unsent(r, fut.result())
            raise
        if isinstance(got, BudgetRefusal):
            raise BudgetExceeded(f"a {r.kind} call to {r.model} may cost up to ${r.amount:.6f}; "
                                 f"${got.left:.6f} of the budget is left")
        if isinstance(got, DailyRefusal):
            raise BudgetExceeded(f"the user's daily budget of ${r.daily_budget:g} is spent (${got.spent:.6f} "
                                 f"today); a {r.kind} call to {r.model} may cost up to ${r.amount:.6f}")
        return got

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        live = [(r, fut) for r, fut in batch if not fut.cancelled()]
        if live:
            task = asyncio.get_running_loop().create_task(self._flush_batch(live))
            self._flushing.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._flushing.discard)

    async def _flush_batch(self, live: list[tuple[ReserveRequest, asyncio.Future[ReserveOutcome]]]) -> None:
        try:
            results = await self.store.reserve([r for r, _ in live])
        except Exception as exc:  # the store failed: every caller hears it
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (r, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
            else:  # its caller was canceled meanwhile
                self._unsent(r, result)

    def _unsent(self, r: ReserveRequest, got: ReserveOutcome) -> None:
        """A reservation whose call was canceled before it was sent: booked at nothing."""
        if isinstance(got, Reservation):
            self.pipeline(r.task_id, self.store.settle(r.task_id, got, r.subtask, booking.unsent()))


class _Slot:
    """One call's place under the limiters, given back once: as soon as its provider has
    answered, so the settlement's commit never keeps a provider call waiting."""

    def __init__(self, limiter: PriorityLimiter, model_limit: ModelLimit | None) -> None:
        self.limiter, self.model_limit = limiter, model_limit
        self.held: list[Callable[[], None]] = []

    async def take(self, priority: int) -> None:
        await self.limiter.acquire(priority)
        self.held.append(self.limiter.release)
        if self.model_limit is not None:
            await self.model_limit.acquire()
            self.held.append(self.model_limit.release)

    def give_back(self) -> None:
        while self.held:
            self.held.pop()()
