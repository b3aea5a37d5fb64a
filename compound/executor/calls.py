"""Model calls: reserve → send → settle, retried on transient errors, then the next
model of the chain. Each attempt has its own ledger row. A fallback chain that fails
raises FallbackExhausted holding every model's error.

How an attempt that failed is booked (the ledger's status and cost):
  a provider's error answer (any status, 408 included)  error, $0 (not billed)
  our own timeout (CallTimedOut, ProviderTimeout)       lost, its worst case (may be billed)
  canceled before it was sent (its reservation was       canceled, $0
    committing as the cancel came)
  canceled mid-stream                                   canceled, at what was received: its input and
                                                        the text so far (bounds, as its reservation's)
  canceled in flight, nothing received or not streamed  canceled, its worst case (nothing is known)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
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
from compound.llm.base import Completion, LLMClient, Message, ToolChoice, ToolSpec
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


def _completes(spec: CallSpec, text: str) -> str | None:
    """What a call's settlement completes its subtask with (None: nothing)."""
    if spec.subtask is None or spec.kind not in (CallKind.subtask, CallKind.check):
        return None
    if spec.result_of is not None:
        return spec.result_of(text)
    return text if spec.kind == CallKind.subtask else None


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
    # A turn of a tool loop (executor/steps.py): the tools the model may call, and the
    # turn (text and tool calls) kept on its ledger row, so a resumed loop replays it.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    turn: bool = False
    counter: AttemptCounter | None = None  # shared by a loop's turns: attempts go on counting

    # What the subtask completes with, in the same transaction as this call's settlement,
    # given the call's text (None: it does not complete). Unset: a subtask call's text.
    result_of: Callable[[str], str | None] | None = None

    # Streamed, each piece given to on_delta(attempt, text) as it arrives (a streamed plan).
    on_delta: Callable[[int, str], None] | None = None


@dataclasses.dataclass(slots=True)
class AttemptCounter:
    """The attempts of a subtask so far, across the turns of its tool loop."""

    n: int = 0


# A provider adds a system prompt of its own when tools are given (Anthropic's is some
# 350 tokens); the tools' JSON and the calls in the history are counted as bytes.
TOOL_FRAMING_TOKENS = 1024


def worst_case_of(spec: CallSpec, max_tokens: int, price: Price) -> float:
    """A call's worst case (core/money.py), with what a tool turn adds: the tools'
    schemas, the calls in the history and the provider's tool framing."""
    if not spec.tools and not any(m.get("tool_calls") for m in spec.messages):
        return worst_case_usd(spec.messages, max_tokens, price)
    # escaped JSON: at least as many bytes as the text, and never a lone surrogate
    extra = json.dumps([[t.name, t.description, t.input_schema] for t in spec.tools])
    view: list[dict[str, Any]] = [dict(m) for m in spec.messages]
    for m in view:
        if m.get("tool_calls"):
            m["content"] = str(m["content"]) + json.dumps([[c.id, c.name, c.arguments] for c in m["tool_calls"]])
    view.append({"role": "system", "content": extra})
    dearest = max(price.input, price.cache_write, price.cache_read)
    return worst_case_usd(view, max_tokens, price) + TOOL_FRAMING_TOKENS * dearest


def turn_record(out: Completion) -> str:
    """A tool loop's turn as its ledger row keeps it (replayed on resume)."""
    return json.dumps({"text": out.text, "tool_calls": [
        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in out.tool_calls]})


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
        received: list[str] | None = None  # a streamed answer's text so far
        try:
            async with asyncio.timeout(timeout):
                # Streamed only when someone listens as it starts (a door's client): a
                # listener that comes later gets the rest of the answer at the task's end.
                answers = self.answers if spec.answer else None
                if spec.tools:
                    out = await self.client.complete(model=model, messages=spec.messages, max_tokens=max_tokens,
                                                     json_schema=spec.json_schema, timeout_s=timeout,
                                                     tools=spec.tools, tool_choice=spec.tool_choice)
                elif spec.on_delta is not None:
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
                    got: list[str] = []
                    received = got

                    def piece(text: str) -> None:
                        got.append(text)
                        # each piece cleaned as the whole text is below, so the pieces
                        # join to exactly the stored answer
                        answers.delta(st.id, attempt, clean_text(text))

                    try:
                        out = await collect(self.client.stream(
                            model=model, messages=spec.messages, max_tokens=max_tokens,
                            json_schema=spec.json_schema, timeout_s=timeout), piece)
                    finally:
                        answers.end(st.id, attempt)
        except asyncio.CancelledError:
            # Booked by what is known (module docstring); the task's end waits for it (quiesce).
            self._settling(st.id, self.store.settle(st.id, res, spec.subtask, self._cut_short(
                spec, res, model=model, received=received, elapsed_s=time.perf_counter() - started)))
            raise
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
        if spec.answer:
            self.answered.add(st.id)
        if not is_clean_text(out.text):  # a model's NUL or lone surrogate must not break the store
            out = dataclasses.replace(out, text=clean_text(out.text))
        u = out.usage
        elapsed = time.perf_counter() - started
        settle = self.store.settle(st.id, res, spec.subtask, Settlement(
            status=CallStatus.ok, cost_usd=out.cost_usd, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens,
            latency_ms=out.latency_s * 1000 or elapsed * 1000,
            complete_with=None if spec.turn else _completes(spec, out.text),
            # kept with the payment: a task resumed before its plan was saved re-plans from
            # it; a tool loop resumed replays its turns
            answer=out.text if spec.kind == CallKind.planner else turn_record(out) if spec.turn else None))
        if self.store.ordered_writes and spec.kind == CallKind.subtask and not spec.turn:
            # Pipelined: the store commits writes in the order asked, so a dependent's
            # reservation (awaited before its call is sent) commits after this; the
            # task's end waits for it in drain().
            self._settling(st.id, settle)
        else:
            await settle
        self._observe(model, spec, "ok", u.input_tokens, u.output_tokens, out.cost_usd, elapsed)
        return out

    def _cut_short(self, spec: CallSpec, res: Reservation, *, model: str, received: list[str] | None,
                   elapsed_s: float) -> Settlement:
        """A call canceled in flight: at what was received when the answer streamed
        (its input and the text so far, counted as its reservation counts them), at its
        worst case when nothing is known."""
        if not received:
            return Settlement(status=CallStatus.canceled, cost_usd=res.amount, latency_ms=elapsed_s * 1000,
                              error="canceled in flight, nothing known of its answer; counted at its worst case")
        out_tokens = len("".join(received).encode("utf-8"))
        cost = min(res.amount, worst_case_usd(spec.messages, out_tokens, self.price_of(model)))
        return Settlement(status=CallStatus.canceled, cost_usd=cost, output_tokens=out_tokens,
                          latency_ms=elapsed_s * 1000,
                          error="canceled mid-stream; counted at its input and the text received so far")

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
            self._settling(r.task_id, self.store.settle(r.task_id, got, r.subtask, Settlement(
                status=CallStatus.canceled, cost_usd=0.0, error="canceled before it was sent")))
