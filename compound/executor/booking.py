"""How an attempt is booked on its ledger row (the status and cost its reservation
settles at):

  answered                                              ok, at its cost (with what it completes)
  a provider's error answer (any status, 408 included)  error, $0 (not billed)
  our own timeout (CallTimedOut, ProviderTimeout)       lost, its worst case (may be billed)
  canceled before it was sent (its reservation was       canceled, $0
    committing as the cancel came)
  canceled mid-stream                                   canceled, at what was received: its input and
                                                        the text so far (bounds, as its reservation's)
  canceled in flight, nothing received or not streamed  canceled, its worst case (nothing is known)
"""

from __future__ import annotations

import json

from compound.core.errors import CallTimedOut, ProviderError, ProviderTimeout, StreamCut
from compound.core.money import Price, worst_case_usd
from compound.executor.callspec import CallSpec
from compound.llm.base import Completion
from compound.store.models import CallKind, CallStatus
from compound.store.values import Reservation, Settlement


def answered(spec: CallSpec, out: Completion, *, elapsed_s: float) -> Settlement:
    """An answered attempt: at its cost, completing its subtask when it does so."""
    u = out.usage
    return Settlement(
        status=CallStatus.ok, cost_usd=out.cost_usd, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens,
        latency_ms=out.latency_s * 1000 or elapsed_s * 1000,
        complete_with=None if spec.turn else completes_with(spec, out.text),
        # kept with the payment: a task resumed before its plan was saved re-plans from
        # it; a tool loop resumed replays its turns
        answer=out.text if spec.kind == CallKind.planner else turn_record(out) if spec.turn else None)


def failed(err: ProviderError, res: Reservation, *, elapsed_s: float) -> Settlement:
    """A failed attempt: a provider's error answer is not billed; our timeout, or a
    stream cut, may have been (its worst case)."""
    lost = isinstance(err, (CallTimedOut, ProviderTimeout, StreamCut))  # maybe billed
    return Settlement(
        status=CallStatus.lost if lost else CallStatus.error, cost_usd=res.amount if lost else 0.0,
        latency_ms=elapsed_s * 1000, error=err.message[:500])


def unsent() -> Settlement:
    """A reserved call canceled before it was sent: nothing was asked, nothing is owed."""
    return Settlement(status=CallStatus.canceled, cost_usd=0.0, error="canceled before it was sent")


def cut_short(spec: CallSpec, res: Reservation, price: Price, *, received: list[str] | None,
              elapsed_s: float) -> Settlement:
    """A call canceled in flight: at what was received when the answer streamed
    (its input and the text so far, counted as its reservation counts them), at its
    worst case when nothing is known."""
    if not received:
        return Settlement(status=CallStatus.canceled, cost_usd=res.amount, latency_ms=elapsed_s * 1000,
                          error="canceled in flight, nothing known of its answer; counted at its worst case")
    out_tokens = len("".join(received).encode("utf-8"))
    cost = min(res.amount, worst_case_usd(spec.messages, out_tokens, price))
    return Settlement(status=CallStatus.canceled, cost_usd=cost, output_tokens=out_tokens,
                      latency_ms=elapsed_s * 1000,
                      error="canceled mid-stream; counted at its input and the text received so far")


def turn_record(out: Completion) -> str:
    """A tool loop's turn as its ledger row keeps it (replayed on resume)."""
    return json.dumps({"text": out.text, "tool_calls": [
        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in out.tool_calls]})


def completes_with(spec: CallSpec, text: str) -> str | None:
    """What a call's settlement completes its subtask with (None: nothing)."""
    if spec.subtask is None or spec.kind not in (CallKind.subtask, CallKind.check):
        return None
    if spec.result_of is not None:
        return spec.result_of(text)
    return text if spec.kind == CallKind.subtask else None
