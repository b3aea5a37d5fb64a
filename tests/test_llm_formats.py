"""Structured output negotiated per model over HTTP, down the ladder of forms
(json_schema, json_object with a schema, vLLM's structured_outputs and guided_json,
json_object, the prompt alone). A refusal is recognised whatever its status (400, 422,
or a 500 whose body names the form's field, as llama-cpp-python answers) and
remembered; the form that was answered is recorded per model."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from compound.core.errors import ProviderError
from compound.llm import LLMClient, collect
from compound.llm.base import Completion, Message
from compound.llm.openai_client import FORMS
from compound.planner.decompose import decompose
from compound.simulator import Failure, Simulator, request_form

MODEL = "openai/gpt-4.1-mini"


def planner_call(client: LLMClient, model: str = MODEL) -> Any:
    async def call(messages: list[Message], schema: dict[str, Any] | None) -> Completion:
        return await client.complete(model=model, messages=messages, max_tokens=2000, json_schema=schema)

    return call


def formats(sim: Simulator) -> list[str | None]:
    return [request_form(c["body"]) for c in sim.calls("planner")]


async def test_a_500_naming_response_format_costs_one_extra_call_once(sim: Simulator, sim_client: LLMClient) -> None:
    sim.script.refuse_formats = {"json_schema": 500}
    with capture_logs() as logs:
        first = await decompose(planner_call(sim_client), "find a and compare b", max_subtasks=5)
    assert [(e["refused"], e["now"]) for e in logs if "refused" in e] == [("json_schema", "json_object_schema")]
    assert [(e["model"], e["form"]) for e in logs if "form" in e] == [(MODEL, "json_object_schema")]
    assert len(first.subtasks) >= 2
    assert formats(sim) == ["json_schema", "json_object_schema"]  # one extra call
    second = await decompose(planner_call(sim_client), "find c and compare d", max_subtasks=5)
    assert len(second.subtasks) >= 2
    assert formats(sim) == ["json_schema", "json_object_schema", "json_object_schema"]  # none the second time
    body = sim.calls("planner")[-1]["body"]
    assert body["response_format"]["schema"]["properties"]["subtasks"]["maxItems"] == 5  # the bounds, to the decoder
    assert sim_client.structured_output() == {MODEL: "json_object_schema"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("statuses", [(400, 422, 400, 400, 422), (422, 500, 500, 422, 500),
                                      (500, 400, 422, 500, 400)])
async def test_each_refusal_steps_down_to_the_prompt_alone(sim: Simulator, sim_client: LLMClient,
                                                           statuses: tuple[int, ...]) -> None:
    sim.script.refuse_formats = dict(zip(FORMS[:-1], statuses, strict=True))
    await decompose(planner_call(sim_client), "a and b", max_subtasks=5)
    await decompose(planner_call(sim_client), "c and d", max_subtasks=5)
    assert formats(sim) == [*FORMS[:-1], None, None]
    assert sim_client.structured_output() == {MODEL: "text"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("accepted", "asked"), [
    (["json_schema"], ["json_schema"]),  # OpenAI, vLLM, Ollama, llama.cpp's server
    (["json_object_schema", "json_object"], ["json_schema", "json_object_schema"]),  # llama-cpp-python
    (["structured_outputs", "json_object"], ["json_schema", "json_object_schema", "structured_outputs"]),
    (["guided_json"], ["json_schema", "json_object_schema", "structured_outputs", "guided_json"]),
    (["json_object"], ["json_schema", "json_object_schema", "structured_outputs", "guided_json", "json_object"]),
])
async def test_the_first_form_the_endpoint_accepts_is_used_and_remembered(
        sim: Simulator, sim_client: LLMClient, accepted: list[str], asked: list[str]) -> None:
    sim.script.accept_formats = accepted
    await decompose(planner_call(sim_client), "a and b", max_subtasks=5)
    assert formats(sim) == asked
    await decompose(planner_call(sim_client), "c and d", max_subtasks=5)
    assert formats(sim) == [*asked, asked[-1]]  # remembered: straight to the accepted form
    assert sim_client.structured_output() == {MODEL: asked[-1]}  # type: ignore[attr-defined]
    sent = sim.calls("planner")[-1]["body"]
    if asked[-1] == "structured_outputs":
        assert sent["structured_outputs"]["json"]["required"] == ["reasoning", "subtasks"]
    if asked[-1] == "guided_json":
        assert sent["guided_json"]["required"] == ["reasoning", "subtasks"]


async def test_an_extra_field_refused_with_a_500_that_names_it_steps_down(sim: Simulator,
                                                                         sim_client: LLMClient) -> None:
    sim.script.refuse_formats = {"json_schema": 400, "json_object_schema": 400, "structured_outputs": 500}
    await decompose(planner_call(sim_client), "a and b", max_subtasks=5)
    assert formats(sim) == ["json_schema", "json_object_schema", "structured_outputs", "guided_json"]


async def test_memory_is_per_model_and_streaming_negotiates_too(sim: Simulator, sim_client: LLMClient) -> None:
    sim.script.refuse_formats = {"json_schema": 500}
    out = await collect(sim_client.stream(model=MODEL, max_tokens=2000, json_schema={"type": "object"},
                                          messages=[{"role": "system", "content": "You are compound's planner."},
                                                    {"role": "user", "content": "<request>a and b</request>"}]))
    assert out.text.startswith("{")
    await decompose(planner_call(sim_client, "openai/gpt-4.1"), "a and b", max_subtasks=5)
    assert formats(sim) == ["json_schema", "json_object_schema", "json_schema", "json_object_schema"]


async def test_a_500_that_does_not_name_response_format_is_a_transient_error(sim: Simulator,
                                                                            sim_client: LLMClient) -> None:
    sim.fail(Failure(500, kind="planner"))
    with pytest.raises(ProviderError) as info:
        await decompose(planner_call(sim_client), "a and b", max_subtasks=5)
    assert info.value.status == 500 and info.value.transient
    await decompose(planner_call(sim_client), "a and b", max_subtasks=5)
    assert formats(sim) == ["json_schema", "json_schema"]  # nothing was remembered


async def test_the_anthropic_wire_gets_the_schema_in_the_prompt_only(sim: Simulator, sim_client: LLMClient) -> None:
    plan = await decompose(planner_call(sim_client, "anthropic/claude-haiku-4-5"), "a and b", max_subtasks=5)
    assert plan.subtasks
    body = sim.calls("planner")[0]["body"]
    assert "response_format" not in body and "tools" not in body
    assert '"subtasks"' in body["system"]  # the prompt states the shape
