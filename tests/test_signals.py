"""The signal bus (signals/bus.py): every transport delivers each signal published
once, in publish order, to a subscriber of its kind; the wire formats read back as sent."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import pytest

from compound.signals import postgres as pg_signals
from compound.signals import socket_pair as socket_signals
from compound.signals.bus import (
    Answer,
    Cancel,
    Committed,
    Dispatch,
    Events,
    Listen,
    LocalSignals,
    Observation,
    QueueWake,
    Signal,
    SlotFree,
    Stop,
    Wake,
)
from compound.signals.postgres import PgSignals
from compound.signals.socket_pair import SocketSignals
from compound.store.db import make_engine
from compound.store.postgres import PostgresRunStore
from compound.store.values import Event

EVENT = Event(task_id="t_1", seq=3, kind="task", data={"status": "executing"})

SOCKET_SIGNALS: list[Signal] = [
    Events([EVENT]), Dispatch("t_1"), Cancel("t_1"), Wake("t_1"), Listen("t_1"), Listen("t_1", False),
    Answer("delta", "t_1", 2, "héllo"), Observation("call_started", {"model": "m", "kind": "worker"}), Stop(),
]


@pytest.mark.parametrize("signal", SOCKET_SIGNALS, ids=lambda s: type(s).__name__)
def test_a_socket_message_reads_back_as_the_signal_sent(signal: Signal) -> None:
    assert socket_signals.decode(socket_signals.encode(signal)) == signal


@pytest.mark.parametrize(("signal", "wire"), [
    (Committed("0a1b2c", "t_1", 4, 7), [("compound_events", "0a1b2c:t_1:4:7")]),
    (Cancel("t_1"), [("compound_cancel", "t_1")]),
    (QueueWake(), [("compound_queue_wake", "")]),
    (SlotFree("gpt"), [("compound_slot_free", "gpt")]),
    (Listen("t_1"), [("compound_answer_want", "+t_1")]),
    (Listen("t_1", False), [("compound_answer_want", "-t_1")]),
    (Answer("end", "t_1", 1), [("compound_answer", '{"op": "end", "t": "t_1", "a": 1, "x": ""}')]),
    (Wake("t_1"), []),  # the store's own NOTIFY of the decision reaches the worker
])
def test_a_notify_payload_is_the_wire_format_of_before(signal: Signal, wire: list[tuple[str, str]]) -> None:
    assert pg_signals.payloads(signal) == wire
    for channel, payload in wire:
        kind = next(k for k, c in pg_signals.CHANNELS.items() if c == channel)
        assert pg_signals.parse(kind, payload) == signal


def test_a_long_answer_piece_is_cut_and_each_part_reads_back_in_order() -> None:
    text = "é" * (pg_signals.CHUNK * 2 + 5)
    parts = [pg_signals.parse(Answer, p) for _, p in pg_signals.payloads(Answer("delta", "t_1", 1, text))]
    assert [len(p.text) for p in parts if isinstance(p, Answer)] == [pg_signals.CHUNK, pg_signals.CHUNK, 5]
    assert "".join(p.text for p in parts if isinstance(p, Answer)) == text


def test_a_payload_that_cannot_be_read_is_no_signal() -> None:
    assert pg_signals.parse(Answer, "{not json") is None
    assert pg_signals.parse(Listen, "t_1") is None
    assert pg_signals.parse(Committed, "origin:t_1:4") is None
    assert pg_signals.parse(Committed, "origin:t_1:four:7") is None


async def test_local_signals_reach_each_subscriber_once_in_order() -> None:
    bus = LocalSignals()
    got: list[Any] = []
    other: list[Any] = []
    bus.subscribe(Cancel, got.append)
    unsubscribe = bus.subscribe(Cancel, other.append)
    bus.subscribe(Wake, got.append)
    sent: list[Signal] = [Cancel("t_1"), Wake("t_1"), Cancel("t_2")]
    for s in sent:
        bus.publish(s)
    unsubscribe()
    await bus.send(Cancel("t_3"))
    assert got == [*sent, Cancel("t_3")]
    assert other == [Cancel("t_1"), Cancel("t_2")]


def _failing(_: object) -> None:
    raise RuntimeError("a subscriber's bug")


async def test_a_failing_subscriber_stops_neither_the_others_nor_the_next_signal() -> None:
    bus = LocalSignals()
    got: list[Any] = []
    bus.subscribe(Cancel, _failing)
    bus.subscribe(Cancel, got.append)
    bus.publish(Cancel("t_1"))
    bus.publish(Cancel("t_2"))
    assert got == [Cancel("t_1"), Cancel("t_2")]


async def test_socket_signals_deliver_held_then_published_in_order() -> None:
    left, right = socket.socketpair()
    _, a_writer = await asyncio.open_unix_connection(sock=left)
    b_reader, _ = await asyncio.open_unix_connection(sock=right)
    a, b = SocketSignals(hold=(Dispatch,)), SocketSignals()
    got: list[Signal] = []
    for kind in {type(s) for s in SOCKET_SIGNALS}:
        b.subscribe(kind, got.append)
    reading = asyncio.get_running_loop().create_task(b.serve(b_reader))
    a.publish(Dispatch("t_held"))  # no connection yet: a dispatch waits for it
    a.publish(Wake("t_dropped"))  # anything else is dropped
    a.attach(a_writer)
    for s in SOCKET_SIGNALS:
        a.publish(s)
    await asyncio.sleep(0)  # one turn of the loop: its signals leave as one frame
    a.publish(Dispatch("t_next_frame"))
    await a.stop()
    a_writer.close()
    await asyncio.wait_for(reading, timeout=30)  # the end of the stream ends serve()
    assert got == [Dispatch("t_held"), *SOCKET_SIGNALS, Dispatch("t_next_frame")]


@pytest.mark.postgres
async def test_pg_signals_reach_a_listening_process_once_in_order(pg_url: str) -> None:
    tag = uuid.uuid4().hex[:8]  # other tests NOTIFY on the same database
    engine = make_engine(pg_url)
    hearer, teller = PgSignals(pg_url), PgSignals(pg_url, engine=lambda: engine)
    got: list[Signal] = []
    done = asyncio.Event()

    def heard(signal: Signal) -> None:
        if tag in getattr(signal, "task_id", ""):
            got.append(signal)
            if isinstance(signal, Cancel) and signal.task_id.endswith("-last"):
                done.set()

    for kind in (Cancel, Listen, Answer, QueueWake):
        hearer.subscribe(kind, heard)
    hearer.subscribe(Events, heard)  # the store's own NOTIFY carries these: no channel, no error
    await hearer.start()
    await teller.start()
    sent: list[Signal] = [Listen(f"{tag}-1"), Answer("begin", f"{tag}-1", 1), Cancel(f"{tag}-2"),
                          Answer("delta", f"{tag}-1", 1, "x" * 10), QueueWake(f"{tag}-3"), Listen(f"{tag}-1", False),
                          Cancel(f"{tag}-last")]
    try:
        for s in sent:
            teller.publish(s)
        await asyncio.wait_for(done.wait(), timeout=30)
        assert got == sent
        done.clear()
        await teller.send(Cancel(f"{tag}-sent-last"))  # committed on the engine before it returns
        await asyncio.wait_for(done.wait(), timeout=30)
        assert got == [*sent, Cancel(f"{tag}-sent-last")]
    finally:
        await teller.stop()
        await hearer.stop()
        engine.dispose()


async def test_pg_signals_not_started_drop_what_is_published() -> None:
    bus = PgSignals("postgresql+psycopg://nobody@127.0.0.1:1/x")
    bus.publish(Listen("t_1", False))  # a door's listener leaving after the host stopped
    await bus.stop()


@pytest.mark.postgres
async def test_a_stores_commit_is_a_committed_signal_heard_on_the_bus(pg_url: str) -> None:
    """The PostgreSQL store's change notifications are signals like the others: a
    PgSignals subscriber of another process hears each commit's event range, once the
    write has committed, and another store given that signal publishes those events."""
    writer = PostgresRunStore(pg_url, listen=False)
    reader = PostgresRunStore(pg_url)
    bus = PgSignals(pg_url)
    heard: asyncio.Queue[Committed] = asyncio.Queue()
    await writer.open()
    await reader.open()
    task = await writer.create_task(prompt="p", budget_usd=1.0)
    bus.subscribe(Committed, lambda c: heard.put_nowait(c) if c.task_id == task.id else None)
    await bus.start()
    try:
        async with reader.subscribe(task.id, after=task.event_seq) as sub:
            await writer.set_status(task.id, "planning")
            committed = await asyncio.wait_for(heard.get(), timeout=30)
            assert committed == Committed(writer.origin, task.id, task.event_seq + 1, task.event_seq + 1)
            ev = await asyncio.wait_for(anext(sub), timeout=30)
        assert (ev.seq, ev.data["status"]) == (task.event_seq + 1, "planning")
        assert reader.listener_pid is not None
    finally:
        await bus.stop()
        await reader.close()
        await writer.close()
