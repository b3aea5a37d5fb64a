"""Model calls: reserve → send → settle, retried on transient errors, then the next
model of the chain. Each attempt has its own ledger row. A fallback chain that fails
raises FallbackExhausted holding every model's error.

How an attempt that failed is booked (the ledger's status and cost):
  a provider's error answer (any status, 408 included)  error, $0 (not billed)
  our own timeout (CallTimedOut, ProviderTimeout)       lost, its worst case (may be billed)
  canceled while in flight                              closed by cancel_open at its worst case
"""

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
    ProviderTimeout,
    StreamCut,
)
from compound.core.logging import get_logger
from compound.core.money import Price, worst_case_usd
from compound.core.settings import Settings
from compound.executor.answers import AnswerStreams
from compound.executor.hooks import CallObserver
from compound.executor.scheduler import PriorityLimiter
from compound.llm import collect
from compound.llm.base import Completion, LLMClient, Message
from compound.planner.validate import is_clean_text
from compound.store.base import (
    BudgetRefusal,
    DailyRefusal,
    Reservation,
    ReserveOutcome,
    ReserveRequest,
    RunStore,
    Settlement,
    TaskState,
)
from compound.store.models import CallKind, CallStatus

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


@dataclasses.dataclass(frozen=True, slots=True)
class CallSpec:
    """One logical call of a task (tried on each model of `models` in turn)."""

    kind: str  # CallKind
    subtask: int | None
    tier: int | None
    models: list[str]
    messages: list[Message]
    max_tokens: int
    json_schema: dict[str, Any] | None = None
    attempts_before: int = 0  # a resumed subtask's attempts so far
    answer: bool = False  # its text is the task's answer (streamed to listeners): the synthesis, or a sole subtask
    # Streamed, each piece given to on_delta(attempt, text) as it arrives (a streamed plan).
    on_delta: Callable[[int, str], None] | None = None


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

    async def call(self, st: TaskState, spec: CallSpec, *, daily: float | None) -> Completion:
        """Raises BudgetExceeded when a call's worst case does not fit; the model's
        ProviderError when one model was tried; FallbackExhausted when several were."""
        attempt = spec.attempts_before
        errors: list[ProviderError] = []
        for model in spec.models:
            mt = self.settings.model_config_for(model).max_tokens or spec.max_tokens
            amount = worst_case_usd(spec.messages, mt, self.price_of(model))

            async def once(model: str = model, mt: int = mt, amount: float = amount) -> Completion:
                nonlocal attempt
                attempt += 1
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
        sem = self._model_limit(model)
        async with self.limiter.slot(st.priority):
            if sem is not None:
                await sem.acquire()
            try:
                res = await self._reserve(ReserveRequest(
                    task_id=st.id, user_id=st.user_id, kind=spec.kind, subtask=spec.subtask, tier=spec.tier,
                    model=model, attempt=attempt, amount=amount, daily_budget=daily))
                return await self._send(st, spec, res, model=model, max_tokens=max_tokens, attempt=attempt)
            finally:
                if sem is not None:
                    sem.release()

    async def _send(self, st: TaskState, spec: CallSpec, res: Reservation, *, model: str,
                    max_tokens: int, attempt: int = 1) -> Completion:
        for o in self.observers:
            o.call_started(model=model, kind=spec.kind)
        started = time.perf_counter()
        timeout = self.settings.call_timeout_s
        try:
            async with asyncio.timeout(timeout):
                # Streamed only when someone listens as it starts (a door's client): a
                # listener that comes later gets the rest of the answer at the task's end.
                answers = self.answers if spec.answer else None
                if spec.on_delta is not None:
                    on_delta = spec.on_delta
                    out = await collect(self.client.stream(
                        model=model, messages=spec.messages, max_tokens=max_tokens,
                        json_schema=spec.json_schema, timeout_s=timeout),
                        lambda text: on_delta(attempt, text))
                elif answers is None or not answers.listening(st.id):
                    out = await self.client.complete(model=model, messages=spec.messages, max_tokens=max_tokens,
                                                     json_schema=spec.json_schema, timeout_s=timeout)
                else:
                    answers.begin(st.id, attempt)
                    try:
                        # each piece cleaned as the whole text is below, so the pieces
                        # join to exactly the stored answer
                        out = await collect(self.client.stream(
                            model=model, messages=spec.messages, max_tokens=max_tokens,
                            json_schema=spec.json_schema, timeout_s=timeout),
                            lambda text: answers.delta(st.id, attempt, clean_text(text)))
                    finally:
                        answers.end(st.id, attempt)
        except asyncio.CancelledError:
            raise  # cancel_open()/recover() settle the open row at its reservation
        except (ProviderError, TimeoutError) as exc:
            # A provider's error answer is not billed; our timeout may have been.
            err = exc if isinstance(exc, ProviderError) else CallTimedOut(model, timeout)
            lost = isinstance(err, (CallTimedOut, ProviderTimeout, StreamCut))  # maybe billed
            cost = res.amount if lost else 0.0
            elapsed = time.perf_counter() - started
            await self.store.settle(st.id, res, spec.subtask, Settlement(
                status=CallStatus.lost if lost else CallStatus.error, cost_usd=cost, latency_ms=elapsed * 1000,
                error=err.message[:500]))
            self._observe(model, spec, "error", 0, 0, cost, elapsed)
            raise err from None
        if not is_clean_text(out.text):  # a model's NUL or lone surrogate must not break the store
            out = dataclasses.replace(out, text=clean_text(out.text))
        u = out.usage
        elapsed = time.perf_counter() - started
        settle = self.store.settle(st.id, res, spec.subtask, Settlement(
            status=CallStatus.ok, cost_usd=out.cost_usd, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens,
            latency_ms=out.latency_s * 1000 or elapsed * 1000,
            complete_with=out.text if spec.kind == CallKind.subtask and spec.subtask is not None else None,
            # kept with the payment: a task resumed before its plan was saved re-plans from it
            answer=out.text if spec.kind == CallKind.planner else None))
        if self.store.ordered_writes and spec.kind == CallKind.subtask:
            # Pipelined: the store commits writes in the order asked, so a dependent's
            # reservation (awaited before its call is sent) commits after this; the
            # task's end waits for it in drain().
            self._settling(st.id, settle)
        else:
            await settle
        self._observe(model, spec, "ok", u.input_tokens, u.output_tokens, out.cost_usd, elapsed)
        return out

    def _settling(self, task_id: str, settle: Awaitable[Any]) -> None:
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
        got = await fut
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
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
