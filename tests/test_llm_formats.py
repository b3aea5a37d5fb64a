"""Structured output negotiated per model over HTTP: json_schema, else json_object,
else the prompt alone. A refusal is recognised whatever its status (400, 422, or a 500
whose body names response_format, as llama-cpp-python answers) and remembered."""

from __future__ import annotations

from typing import Any

import pytest

from compound.core.errors import ProviderError
from compound.llm import LLMClient, collect
from compound.llm.base import Completion, Message
from compound.llm.simulator import Failure, Simulator
from compound.planner.decompose import decompose

MODEL = "openai/gpt-4.1-mini"


def planner_call(client: LLMClient, model: str = MODEL) -> Any:
    async def call(messages: list[Message], schema: dict[str, Any] | None) -> Completion:
        return await client.complete(model=model, messages=messages, max_tokens=2000, json_schema=schema)

    return call


def formats(sim: Simulator) -> list[str | None]:
    return [(c["body"].get("response_format") or {}).get("type") for c in sim.calls("planner")]


async def test_a_500_naming_response_format_costs_one_extra_call_once(sim: Simulator, sim_client: LLMClient) -> None:
    sim.script.refuse_formats = {"json_schema": 500}
    first = await decompose(planner_call(sim_client), "find a and compare b", max_subtasks=5)
    assert len(first.subtasks) >= 2
    assert formats(sim) == ["json_schema", "json_object"]  # one extra call
    second = await decompose(planner_call(sim_client), "find c and compare d", max_subtasks=5)
    assert len(second.subtasks) >= 2
    assert formats(sim) == ["json_schema", "json_object", "json_object"]  # and none the second time


@pytest.mark.parametrize(("schema_status", "object_status"), [(400, 422), (422, 500), (500, 400)])
async def test_each_refusal_steps_down_to_the_prompt_alone(sim: Simulator, sim_client: LLMClient,
                                                           schema_status: int, object_status: int) -> None:
    sim.script.refuse_formats = {"json_schema": schema_status, "json_object": object_status}
    await decompose(planner_call(sim_client), "a and b", max_subtasks=5)
    await decompose(planner_call(sim_client), "c and d", max_subtasks=5)
    assert formats(sim) == ["json_schema", "json_object", None, None]


async def test_memory_is_per_model_and_streaming_negotiates_too(sim: Simulator, sim_client: LLMClient) -> None:
    sim.script.refuse_formats = {"json_schema": 500}
    out = await collect(sim_client.stream(model=MODEL, max_tokens=2000, json_schema={"type": "object"},
                                          messages=[{"role": "system", "content": "You are compound's planner."},
                                                    {"role": "user", "content": "<request>a and b</request>"}]))
    assert out.text.startswith("{")
    await decompose(planner_call(sim_client, "openai/gpt-4.1"), "a and b", max_subtasks=5)
    assert formats(sim) == ["json_schema", "json_object", "json_schema", "json_object"]


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
