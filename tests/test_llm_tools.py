"""Native tool calling on the LLM seam: every adapter (the anthropic and openai SDKs, and
litellm forced onto the same models) sends tools and reads tool calls, plain and
streamed, against the provider simulator speaking both wire formats; the wire names of
`server.tool` and unreadable arguments, as pure functions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from compound.core.settings import Settings
from compound.llm import Completion, LLMClient, Message, ToolCall, ToolSpec, build_client, collect
from compound.llm.toolwire import (
    ERROR_PREFIX,
    RAW_ARGUMENTS,
    StreamedCalls,
    ToolNames,
    arguments_text,
    parse_arguments,
    raw_arguments,
    wire_name,
)
from compound.simulator import Failure, Simulator, ToolUse, example_arguments

WIRES = ["anthropic/claude-haiku-4-5", "openai/gpt-4.1-mini"]

LOOKUP = ToolSpec("facts.lookup", "Look up a fact.", {
    "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
    "required": ["query"]})
BUMP = ToolSpec("facts.bump", "Add n to the counter.", {
    "type": "object", "properties": {"n": {"type": "integer", "default": 1}}, "required": ["n"]})


@pytest.fixture(autouse=True)
def litellm_client_per_loop() -> Iterator[None]:
    """litellm streams the Anthropic wire through one module-level HTTP client, made on
    its first use and kept for the process; each test runs on an event loop of its own,
    where that client's pooled connections belong to a closed loop. Each test gets it
    made afresh on its own loop (a server keeps its one loop)."""
    import litellm

    vars(litellm).pop("module_level_aclient", None)
    yield
    vars(litellm).pop("module_level_aclient", None)


def msgs(body: str) -> list[Message]:
    return [{"role": "system", "content": "You are compound's worker.\nrules"},
            {"role": "user", "content": f"<subtask>{body}</subtask>"}]


@pytest.fixture(params=["sdk", "litellm"])
def client(request: pytest.FixtureRequest, sim_settings: Settings) -> LLMClient:
    if request.param == "sdk":
        return build_client(sim_settings)
    models = {m: c.model_copy(update={"adapter": "litellm"}) for m, c in sim_settings.models.items()}
    return build_client(sim_settings.model_copy(update={"models": models}))


async def call(client: LLMClient, model: str, messages: list[Message], *, streamed: bool,
               tools: list[ToolSpec] | None = None, **kw: Any) -> Completion:
    if streamed:
        return await collect(client.stream(model=model, messages=messages, max_tokens=300, tools=tools, **kw))
    return await client.complete(model=model, messages=messages, max_tokens=300, tools=tools, **kw)


def followed(messages: list[Message], turn: Completion, results: list[tuple[str, bool]]) -> list[Message]:
    """The conversation after a turn that asked for tools, with each call's result."""
    out: list[Message] = [*messages, {"role": "assistant", "content": turn.text, "tool_calls": list(turn.tool_calls)}]
    for c, (text, error) in zip(turn.tool_calls, results, strict=True):
        out.append({"role": "tool", "content": text, "tool_call_id": c.id, "is_error": error})
    return out


# --- the wire, end to end ----------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("model", WIRES)
async def test_a_tool_is_called_then_its_result_answered(sim: Simulator, client: LLMClient, model: str,
                                                         streamed: bool) -> None:
    first = await call(client, model, msgs("find the capital"), streamed=streamed, tools=[LOOKUP, BUMP])
    # The simulator's default: the first tool, once, with arguments from its schema.
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("facts.lookup", {"query": "example query"})]
    assert first.tool_calls[0].id
    assert first.finish_reason in ("tool_use", "tool_calls")
    assert first.usage.output_tokens > 0 and first.cost_usd > 0
    body = sim.calls("worker")[0]["body"]
    names = [t.get("name") or t["function"]["name"] for t in body["tools"]]
    assert names == ["facts__lookup", "facts__bump"]  # no dot on the wire
    second = await call(client, model, followed(msgs("find the capital"), first, [("Paris", False)]),
                        streamed=streamed, tools=[LOOKUP, BUMP])
    assert second.tool_calls == ()
    assert second.text.startswith("Result of subtask: find the capital")
    assert "[tool results: Paris]" in second.text  # the model saw the result
    assert "Paris" in sim.calls("worker")[1]["text"]


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("model", WIRES)
async def test_scripted_calls_come_back_decoded_in_order(sim: Simulator, client: LLMClient, model: str,
                                                         streamed: bool) -> None:
    sim.answer("worker", ToolUse([("facts.bump", {"n": 2}), ("facts.lookup", {"query": "a \"quoted\" é"})],
                                 text="Let me look."))
    got = await call(client, model, msgs("bump then look"), streamed=streamed, tools=[LOOKUP, BUMP])
    assert [(c.name, c.arguments) for c in got.tool_calls] == [
        ("facts.bump", {"n": 2}), ("facts.lookup", {"query": 'a "quoted" é'})]
    assert len({c.id for c in got.tool_calls}) == 2
    assert got.text == "Let me look."


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("model", WIRES)
async def test_malformed_arguments_and_invented_names_come_back_as_they_are(
        sim: Simulator, client: LLMClient, model: str, streamed: bool) -> None:
    sim.answer("worker", ToolUse([("facts.lookup", '{"query": "unterminated'), ("web.search", {"q": "x"})]))
    got = await call(client, model, msgs("look"), streamed=streamed, tools=[LOOKUP])
    bad, invented = got.tool_calls
    assert bad.name == "facts.lookup"
    assert bad.arguments == {RAW_ARGUMENTS: '{"query": "unterminated'}
    assert raw_arguments(bad) == '{"query": "unterminated'
    assert invented.name == "web.search"  # decodes to no given tool: returned as the model wrote it
    assert invented.arguments == {"q": "x"}


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("model", WIRES)
async def test_tool_choice_none_answers_in_text(sim: Simulator, client: LLMClient, model: str,
                                                streamed: bool) -> None:
    got = await call(client, model, msgs("answer now"), streamed=streamed, tools=[LOOKUP], tool_choice="none")
    assert got.tool_calls == () and got.text.startswith("Result of subtask: answer now")
    body = sim.calls("worker")[0]["body"]
    assert body["tool_choice"] in ("none", {"type": "none"})


@pytest.mark.parametrize("model", WIRES)
async def test_error_results_reach_the_model_as_errors(sim: Simulator, client: LLMClient, model: str) -> None:
    first = await client.complete(model=model, messages=msgs("look"), max_tokens=300, tools=[LOOKUP])
    await client.complete(model=model, messages=followed(msgs("look"), first, [("server down", True)]),
                          max_tokens=300, tools=[LOOKUP])
    body = sim.calls("worker")[1]["body"]
    if model.startswith("anthropic/") and "tool_result" in json.dumps(body):
        block = next(b for m in body["messages"] if isinstance(m["content"], list)
                     for b in m["content"] if b.get("type") == "tool_result")
        assert block["tool_use_id"] == first.tool_calls[0].id
        assert block.get("is_error") is True or ERROR_PREFIX in json.dumps(block)
    else:
        tool = next(m for m in body["messages"] if m["role"] == "tool")
        assert tool["tool_call_id"] == first.tool_calls[0].id
        assert tool["content"] == ERROR_PREFIX + "server down"


async def test_the_sdk_adapters_send_each_wire_its_own_shapes(sim: Simulator, sim_settings: Settings) -> None:
    client = build_client(sim_settings)
    for model in WIRES:
        first = await client.complete(model=model, messages=msgs("look"), max_tokens=300, tools=[LOOKUP])
        await client.complete(model=model, messages=followed(msgs("look"), first, [("boom", True)]),
                              max_tokens=300, tools=[LOOKUP])
    a_first, a_second, o_first, o_second = [c["body"] for c in sim.calls("worker")]
    assert a_first["tools"] == [{"name": "facts__lookup", "description": "Look up a fact.",
                                 "input_schema": LOOKUP.input_schema}]
    assert a_first["tool_choice"] == {"type": "auto"}
    assistant, results = a_second["messages"][1:]
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": first_id(a_second), "name": "facts__lookup", "input": {"query": "example query"}}]}
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": first_id(a_second), "content": "boom", "is_error": True}]}
    assert o_first["tools"] == [{"type": "function", "function": {
        "name": "facts__lookup", "description": "Look up a fact.", "parameters": LOOKUP.input_schema}}]
    assert o_first["tool_choice"] == "auto"
    assistant, result = o_second["messages"][2:]
    call_id = assistant["tool_calls"][0]["id"]
    assert assistant == {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": "facts__lookup", "arguments": '{"query":"example query"}'}}]}
    assert result == {"role": "tool", "tool_call_id": call_id, "content": "Error: boom"}


def first_id(body: dict[str, Any]) -> str:
    return str(body["messages"][1]["content"][0]["id"])


@pytest.mark.parametrize("model", WIRES)
async def test_a_stream_cut_inside_a_tool_call_is_an_error_not_a_call(sim: Simulator, sim_settings: Settings,
                                                                    model: str) -> None:
    from compound.core.errors import ProviderError

    client = build_client(sim_settings)
    sim.answer("worker", ToolUse([("facts.lookup", {"query": "x" * 200})]))
    sim.fail(Failure(529, midstream="error", after_pieces=2))
    with pytest.raises(ProviderError) as info:
        await call(client, model, msgs("look"), streamed=True, tools=[LOOKUP])
    assert info.value.transient


async def test_without_tools_nothing_about_tools_is_sent(sim: Simulator, client: LLMClient) -> None:
    for model in WIRES:
        got = await client.complete(model=model, messages=msgs("plain"), max_tokens=100)
        assert got.tool_calls == ()
    for seen in sim.calls("worker"):
        assert "tools" not in seen["body"] and "tool_choice" not in seen["body"]


# --- the rules, pure -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "wire"), [
    ("facts.lookup", "facts__lookup"),
    ("my-server.get_weather", "my-server__get_weather"),
    ("s.__private", "s____private"),  # a tool may start with "_": the first "__" still splits
    ("noserver", "noserver"),
])
def test_wire_names_plain_when_unambiguous(name: str, wire: str) -> None:
    assert wire_name(name) == wire
    assert ToolNames.of([name]).name(wire) == name


@pytest.mark.parametrize("name", [
    "a__b.c",  # the server holds "__"
    "a_.b",  # the server ends in "_"
    "files.read.text",  # a dot in the tool's name
    "files.lire le fichier",  # characters no provider takes
    "s." + "t" * 80,  # too long
    "files.données",
])
def test_wire_names_hashed_when_plain_would_be_ambiguous_or_refused(name: str) -> None:
    wire = wire_name(name)
    assert len(wire) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in wire)
    assert wire == wire_name(name)  # stable
    names = ToolNames.of([name, "a.b__c", "a__b.c"])
    assert names.name(names.wire(name)) == name


def test_distinct_names_never_share_a_wire_name() -> None:
    names = ["a__b.c", "a.b__c", "a_.b", "a._b", "x.y", "x_y", "x__y"]
    table = ToolNames.of(names)
    assert len(set(table.to_wire.values())) == len(names)
    assert all(table.name(table.wire(n)) == n for n in names)
    assert table.name("unknown__tool") == "unknown__tool"


@pytest.mark.parametrize(("text", "arguments"), [
    (None, {}),
    ("", {}),
    ("  ", {}),
    ("{}", {}),
    ('{"a": [1, {"b": null}]}', {"a": [1, {"b": None}]}),
    ('{"a": 1', {RAW_ARGUMENTS: '{"a": 1'}),
    ("[1, 2]", {RAW_ARGUMENTS: "[1, 2]"}),
    ('"text"', {RAW_ARGUMENTS: '"text"'}),
    ("null", {RAW_ARGUMENTS: "null"}),
    ("NaN", {RAW_ARGUMENTS: "NaN"}),
])
def test_arguments_are_always_an_object(text: str | None, arguments: dict[str, Any]) -> None:
    assert parse_arguments(text) == arguments


def test_unreadable_arguments_go_back_as_the_model_wrote_them() -> None:
    assert arguments_text(ToolCall("1", "a.b", {RAW_ARGUMENTS: "{oops"})) == "{oops"
    assert arguments_text(ToolCall("1", "a.b", {"x": "é"})) == '{"x":"é"}'
    # A real argument of that name beside others is an argument, not raw text.
    assert raw_arguments(ToolCall("1", "a.b", {RAW_ARGUMENTS: "x", "y": 1})) is None


def test_streamed_pieces_join_into_calls() -> None:
    names = ToolNames.of(["facts.lookup"])
    calls = StreamedCalls(names)

    class F:
        def __init__(self, name: str | None, arguments: str | None) -> None:
            self.name, self.arguments = name, arguments

    class D:
        def __init__(self, index: int, id: str | None, name: str | None, arguments: str | None) -> None:
            self.index, self.id, self.function = index, id, F(name, arguments)

    calls.openai_delta([D(0, "c0", "facts__lookup", "")])
    calls.openai_delta([D(1, "c1", "other", '{"a"')])
    calls.openai_delta([D(0, None, None, '{"query"'), D(1, None, None, ": 1}")])
    calls.openai_delta([D(0, None, "facts__lookup", ': "x"}')])  # a name repeated per chunk
    assert calls.calls() == (ToolCall("c0", "facts.lookup", {"query": "x"}), ToolCall("c1", "other", {"a": 1}))


@pytest.mark.parametrize(("schema", "arguments"), [
    ({"type": "object", "properties": {}}, {}),
    ({"properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q"]}, {"q": "example q"}),
    ({"properties": {"n": {"type": "integer", "minimum": 3}, "f": {"type": "number"}, "b": {"type": "boolean"},
                     "l": {"type": "array"}, "e": {"enum": ["x", "y"]}, "o": {"type": "object", "properties": {
                         "k": {"type": ["null", "string"]}}, "required": ["k"]}},
      "required": ["n", "f", "b", "l", "e", "o"]},
     {"n": 3, "f": 1.0, "b": True, "l": [], "e": "x", "o": {"k": "example k"}}),
])
def test_the_simulators_default_arguments_follow_the_schema(schema: dict[str, Any],
                                                            arguments: dict[str, Any]) -> None:
    assert example_arguments(schema) == arguments


def test_history_names_never_clash_with_the_given_tools() -> None:
    from compound.llm.toolwire import names_of

    invented = ToolCall("1", "facts__lookup", {})  # a model's own spelling, returned as it came
    names = names_of([LOOKUP], [{"role": "assistant", "content": "", "tool_calls": [invented]}])
    assert names.name("facts__lookup") == "facts.lookup"
    assert names.wire("facts__lookup") != "facts__lookup"


def test_a_script_file_queues_tool_calls() -> None:
    from compound.simulator import Script

    script = Script.from_json({"answers": {"worker": [
        {"tool_calls": [{"name": "facts.lookup", "arguments": {"query": "q"}}], "text": "Looking."}, "done"]}})
    assert script.answers["worker"] == [ToolUse([("facts.lookup", {"query": "q"})], text="Looking."), "done"]


async def test_the_sdks_own_stream_accumulators_read_the_simulators_tool_calls(sim: Simulator) -> None:
    """The SDKs' high-level stream helpers rebuild the message from the events and check
    their order: the simulator's streamed tool calls are what the providers send."""
    import anthropic
    import openai

    sim.answer("worker", ToolUse([("facts.lookup", {"query": "x" * 60})], text="Looking it up."),
               ToolUse([("facts.bump", {"n": 2}), ("facts.lookup", {"query": "y"})]))
    a = anthropic.AsyncAnthropic(api_key="k", base_url=sim.url)  # type: ignore[attr-defined]
    async with a.messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=[{"role": "user", "content": "q"}],
                                 system="You are compound's worker.", tools=[{
                                     "name": "facts__lookup", "input_schema": LOOKUP.input_schema}]) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"query": "x" * 60}  # type: ignore[union-attr]
    o = openai.AsyncOpenAI(api_key="k", base_url=sim.url + "/v1")  # type: ignore[attr-defined]
    async with o.chat.completions.stream(model="gpt-4.1-mini", messages=[
            {"role": "system", "content": "You are compound's worker."}, {"role": "user", "content": "q"}],
            tools=[{"type": "function", "function": {"name": "facts__bump", "parameters": BUMP.input_schema}},
                   {"type": "function", "function": {"name": "facts__lookup",
                                                     "parameters": LOOKUP.input_schema}}]) as chunks:
        completion = await chunks.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []] == [
        ("facts__bump", {"n": 2}), ("facts__lookup", {"query": "y"})]
    await a.close()
    await o.close()


def test_the_anthropic_turns_of_a_tool_conversation() -> None:
    from compound.llm.anthropic_client import to_anthropic
    from compound.llm.toolwire import names_of

    calls = [ToolCall("t1", "facts.lookup", {"query": "a"}), ToolCall("t2", "facts.bump", {RAW_ARGUMENTS: "{n"})]
    history: list[Message] = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "question", "cache": True},
        {"role": "assistant", "content": " \n", "tool_calls": calls},
        {"role": "tool", "content": "A", "tool_call_id": "t1"},
        {"role": "tool", "content": "bad arguments", "tool_call_id": "t2", "is_error": True, "cache": True},
        {"role": "user", "content": "go on"},
    ]
    system, turns = to_anthropic(history, names_of([LOOKUP, BUMP], history))
    assert system == "sys"
    assert turns == [
        {"role": "user", "content": [{"type": "text", "text": "question", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [  # a blank text block is left out: the API refuses one
            {"type": "tool_use", "id": "t1", "name": "facts__lookup", "input": {"query": "a"}},
            {"type": "tool_use", "id": "t2", "name": "facts__bump", "input": {RAW_ARGUMENTS: "{n"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "A"},
            {"type": "tool_result", "tool_use_id": "t2", "content": "bad arguments", "is_error": True,
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "go on"}]},
    ]
