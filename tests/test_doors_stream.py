"""Answers streamed through the doors as the synthesis call writes them (the openai SDK
and the a2a-sdk against the served app and the simulator), what a synthesis call that
fails midway does to a stream, and a chat client that goes away canceling its task."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import a2a_pb2 as pb

from compound.core.errors import ProviderError
from compound.core.settings import Settings
from compound.llm import LLMClient, build_client
from compound.llm.base import Completion, Delta, StreamEvent
from compound.simulator import Simulator, prompt_kind
from compound.store.models import TaskStatus
from tests.fixtures.served import Served

PROMPT = "Compare SQLite and PostgreSQL for a small team and recommend one"
ONE_STEP = "Explain quicksort"  # the simulator plans it as one subtask
PIECE = 24  # the simulator streams 24 characters a delta


@dataclass
class CutStreams:
    """The simulator's client whose next synthesis streams are cut after `cuts[i]`
    pieces by a ProviderError, as a connection lost midway would be (the planner's
    streamed answers go through whole)."""

    inner: LLMClient
    cuts: list[tuple[int, bool]] = field(default_factory=list)  # (pieces, transient)

    async def warm(self) -> None:
        await self.inner.warm()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def complete(self, **kwargs: Any) -> Completion:
        return await self.inner.complete(**kwargs)

    async def stream(self, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        synthesis = prompt_kind(kwargs["messages"][0]["content"]) == "synthesizer"
        cut = self.cuts.pop(0) if self.cuts and synthesis else None
        sent = 0
        async with contextlib.aclosing(self.inner.stream(**kwargs)) as events:  # type: ignore[type-var]
            async for event in events:
                if cut is not None and isinstance(event, Delta) and sent == cut[0]:
                    raise ProviderError("simulated: the connection was lost midway", transient=cut[1])
                sent += isinstance(event, Delta)
                yield event


@pytest.fixture
def cutting(sim_settings: Settings) -> CutStreams:
    return CutStreams(build_client(sim_settings))


@pytest.fixture
def sim_client(cutting: CutStreams) -> LLMClient:  # the served app's client
    return cutting


@contextlib.contextmanager
def held(sim: Simulator, needle: str) -> Iterator[threading.Event]:
    """Requests whose text has `needle` wait at the simulator until the event is set (at
    the latest when the block ends)."""
    release = threading.Event()
    sim.script.holds[needle] = release
    try:
        yield release
    finally:
        release.set()


def chat(served: Served, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=token, max_retries=0)


async def snapshot(served: Served, task_id: str) -> dict[str, Any]:
    got: dict[str, Any] = await served.app.state.store.snapshot(task_id)
    return got


async def streamed(served: Served, sim: Simulator) -> tuple[str, list[str], str | None]:
    """(task id, the content deltas, the error's code if the stream ended in one). The
    task's calls wait at the simulator until the first chunk is here: the door listens
    to the answer before it sends that, so no piece can come before."""
    with held(sim, PROMPT) as release:
        stream = await chat(served, served.alice).chat.completions.create(
            model="compound", messages=[{"role": "user", "content": PROMPT}], stream=True)
        first = await stream.__anext__()
        release.set()
    deltas: list[str] = []
    task_id = first.id
    try:
        async for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                deltas.append(ch.choices[0].delta.content)
    except openai.APIError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return task_id, deltas, str(body.get("code"))
    return task_id, deltas, None


async def test_the_answer_streams_as_many_content_deltas(served: Served, sim: Simulator) -> None:
    task_id, deltas, error = await streamed(served, sim)
    snap = await snapshot(served, task_id)
    assert error is None and snap["status"] == TaskStatus.completed
    assert "".join(deltas) == snap["result"]
    assert len(deltas) == -(-len(snap["result"]) // PIECE) > 3  # as the synthesis streamed it, not one chunk
    assert sim.calls("synthesizer")[0]["body"]["stream"] is True


async def test_a_model_nul_is_cleaned_in_the_deltas_as_in_the_result(served: Served, sim: Simulator) -> None:
    sim.answer("synthesizer", "before\x00after " + "x" * 60)
    task_id, deltas, error = await streamed(served, sim)
    snap = await snapshot(served, task_id)
    assert error is None and snap["result"].startswith("before\ufffdafter")
    assert "".join(deltas) == snap["result"] and len(deltas) > 1


async def test_a_retried_answer_that_repeats_itself_streams_whole(served: Served, cutting: CutStreams,
                                                                  sim: Simulator) -> None:
    cutting.cuts.append((2, True))  # the first attempt dies after 2 pieces; the retry says the same
    task_id, deltas, error = await streamed(served, sim)
    snap = await snapshot(served, task_id)
    assert len(sim.calls("synthesizer")) == 2
    assert error is None and snap["status"] == TaskStatus.completed
    assert "".join(deltas) == snap["result"]  # nothing twice: the retry only adds what goes beyond
    assert len(deltas) > 2


async def test_a_retried_answer_that_differs_ends_the_chat_stream_in_an_error(
        served: Served, cutting: CutStreams, sim: Simulator) -> None:
    first, second = "First attempt: " + "a" * 80, "Second attempt: " + "b" * 80
    sim.answer("synthesizer", first, second)
    cutting.cuts.append((2, True))
    task_id, deltas, error = await streamed(served, sim)
    snap = await snapshot(served, task_id)
    assert snap["status"] == TaskStatus.completed and snap["result"] == second
    # what went out cannot be taken back: the client is told, not given a wrong answer
    assert "".join(deltas) == first[: 2 * PIECE]
    assert error == "stream_interrupted"


async def test_a_synthesis_that_fails_midway_ends_the_chat_stream_in_an_error(
        served: Served, cutting: CutStreams, sim: Simulator) -> None:
    cutting.cuts.append((2, False))  # permanent: no retry; the task is partial, the subtasks joined
    task_id, deltas, error = await streamed(served, sim)
    snap = await snapshot(served, task_id)
    assert snap["status"] == TaskStatus.partial and "synthesis not run" in snap["error"]
    assert len(deltas) == 2 and not snap["result"].startswith("".join(deltas))
    assert error == "stream_interrupted"


async def a2a_stream(served: Served, sim: Simulator) -> list[Any]:
    """The events of an A2A stream; the task's calls wait until its first event is here."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {served.alice}"}, timeout=120) as http:
        client = await create_client(served.url, ClientConfig(httpx_client=http, streaming=True))
        msg = pb.Message(message_id="m-1", role=pb.ROLE_USER, parts=[pb.Part(text=PROMPT)])
        events = []
        with held(sim, PROMPT) as release:
            async for r in client.send_message(pb.SendMessageRequest(message=msg)):
                events.append(r)
                release.set()
        return events


def artifact_text(events: list[Any]) -> str:
    """The artifact as an A2A client builds it: append adds, otherwise it replaces."""
    text = ""
    for r in events:
        if r.HasField("artifact_update"):
            u = r.artifact_update
            got = "".join(p.text for p in u.artifact.parts)
            text = text + got if u.append else got
    return text


async def test_a2a_replaces_the_artifact_when_a_retry_differs(served: Served, cutting: CutStreams,
                                                              sim: Simulator) -> None:
    first, second = "First attempt: " + "a" * 80, "Second attempt: " + "b" * 80
    sim.answer("synthesizer", first, second)
    cutting.cuts.append((2, True))
    events = await a2a_stream(served, sim)
    chunks = [r.artifact_update for r in events if r.HasField("artifact_update")]
    assert ["".join(p.text for p in c.artifact.parts) for c in chunks] == [first[:PIECE], first[PIECE:2 * PIECE],
                                                                           second]
    assert [(c.append, c.last_chunk) for c in chunks] == [(False, False), (True, False), (False, True)]
    assert artifact_text(events) == second == (await snapshot(served, events[0].task.id))["result"]





async def wait_status(served: Served, task_id: str, status: str) -> None:
    store = served.app.state.store

    async def reached() -> bool:
        got: bool = (await store.head(task_id)).status == status
        return got

    await served.wait_for(reached, f"task {task_id} {status}")


async def test_a_stream_client_that_disconnects_cancels_its_task(served: Served, sim: Simulator) -> None:
    with held(sim, "Work out: Explain quicksort"):
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as http, http.stream(
                "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {served.alice}"},
                json={"model": "compound", "stream": True,
                      "messages": [{"role": "user", "content": ONE_STEP}]}) as r:
            task_id = r.headers["x-compound-task-id"]
            lines = r.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # the role chunk: the stream is open
            await served.wait_for(lambda: sim.calls("worker"), "the subtask at the provider")
        # leaving the block closed the connection midway
        await wait_status(served, task_id, TaskStatus.canceled)
        snap = await snapshot(served, task_id)
        assert snap["error"] == "canceled by request"
        assert not sim.calls("synthesizer")  # no more money spent on it
        assert snap["subtasks"][0]["status"] != TaskStatus.completed


async def test_a_waiting_client_that_disconnects_cancels_its_task(served: Served, sim: Simulator) -> None:
    store = served.app.state.store
    principal = await store.principal_for_token(served.alice)
    with held(sim, "Work out: Explain quicksort"):
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
            call = asyncio.create_task(http.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {served.alice}"},
                json={"model": "compound", "messages": [{"role": "user", "content": ONE_STEP}]}))
            await served.wait_for(lambda: sim.calls("worker"), "the subtask at the provider")
            rows = (await store.list_tasks(user_id=principal.user_id))[0]
            task_id = rows[0]["id"]
            call.cancel()  # the client gives up: httpx closes the connection
            with contextlib.suppress(asyncio.CancelledError):
                await call
            await wait_status(served, task_id, TaskStatus.canceled)
    assert not sim.calls("synthesizer")

