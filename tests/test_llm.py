"""The LLM seam over real HTTP: every adapter (the anthropic and openai SDKs, and
litellm forced onto the same models) against the provider simulator for both wire
formats; pricing against litellm's own arithmetic; the offline guard."""

from __future__ import annotations

import json
from typing import Any

import litellm
import pytest
from pydantic import SecretStr

from compound.core.errors import ConfigError, NetworkRefused, ProviderError, ProviderTimeout
from compound.core.settings import ModelConfig, Settings
from compound.llm import Completion, Delta, LLMClient, build_client, collect
from compound.llm.base import Message, Usage
from compound.llm.litellm_client import LiteLLMClient
from compound.llm.pricing import check_prices, price_of
from compound.planner.validate import validate_plan
from compound.simulator import Failure, Simulator

WIRES = ["anthropic/claude-haiku-4-5", "openai/gpt-4.1-mini"]


def msgs(kind: str, body: str) -> list[Message]:
    return [{"role": "system", "content": f"You are compound's {kind}.\nrules"},
            {"role": "user", "content": body}]


@pytest.fixture(params=["sdk", "litellm"])
def client(request: pytest.FixtureRequest, sim_settings: Settings) -> LLMClient:
    """The registry as build_client() makes it, with every model on its SDK adapter, or
    with every model forced onto litellm (the adapter of every other provider)."""
    if request.param == "sdk":
        return build_client(sim_settings)
    models = {m: c.model_copy(update={"adapter": "litellm"}) for m, c in sim_settings.models.items()}
    return build_client(sim_settings.model_copy(update={"models": models}))


def adapter_name(client: LLMClient, model: str) -> str:
    return type(client.adapter_for(model)).__name__  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", WIRES)
async def test_a_call_returns_text_usage_and_cost(sim: Simulator, client: LLMClient, model: str) -> None:
    out = await client.complete(model=model, messages=msgs("worker", "<subtask>count to 3</subtask>"),
                                max_tokens=100)
    assert out.text.startswith("Result of subtask: count to 3")
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    assert out.cost_usd == pytest.approx(price_of(model, Settings()).cost(out.usage), abs=1e-12)
    seen = sim.calls("worker")
    assert len(seen) == 1 and seen[0]["model"] == model.split("/", 1)[1]
    assert seen[0]["wire"] == model.split("/", 1)[0]
    assert seen[0]["body"]["max_tokens"] == 100


def test_the_registry_picks_the_adapter_from_the_model(sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(update={"tier3_models": ["gemini/gemini-2.0-flash", "claude-haiku-4-5"]})
    settings.models["openai/gpt-4.1"] = ModelConfig(api_base="http://127.0.0.1:9/v1", adapter="litellm")
    client = build_client(settings)
    assert adapter_name(client, "anthropic/claude-sonnet-4-5") == "AnthropicClient"
    assert adapter_name(client, "claude-haiku-4-5") == "AnthropicClient"  # unprefixed: litellm's map
    assert adapter_name(client, "openai/gpt-4.1-mini") == "OpenAIClient"
    assert adapter_name(client, "gemini/gemini-2.0-flash") == "LiteLLMClient"
    assert adapter_name(client, "openai/gpt-4.1") == "LiteLLMClient"  # forced by the config
    # one SDK client per base URL and key, made at start
    sdk = client.adapters["anthropic"]  # type: ignore[attr-defined]
    assert len(sdk._clients) == 1


@pytest.mark.parametrize("model", WIRES)
async def test_planner_answers_validate(client: LLMClient, model: str) -> None:
    out = await client.complete(
        model=model, messages=msgs("planner", "<request>find a and compare b; then decide</request>"),
        max_tokens=1000)
    plan = validate_plan(json.loads(out.text), max_subtasks=20)
    assert len(plan.subtasks) >= 2 and plan.subtasks[-1].depends_on


@pytest.mark.parametrize("model", WIRES)
@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (529, True),
                                                   (400, False), (401, False), (403, False), (404, False),
                                                   (413, False), (422, False)])
async def test_errors_map_to_provider_errors(sim: Simulator, client: LLMClient, model: str,
                                             status: int, transient: bool) -> None:
    sim.fail(Failure(status, retry_after=3 if status == 429 else None))
    with pytest.raises(ProviderError) as info:
        await client.complete(model=model, messages=msgs("worker", "x"), max_tokens=10)
    if adapter_name(client, model) != "LiteLLMClient" or status in (429, 500, 503, 529, 400, 401):
        assert info.value.status == status  # litellm folds some 4xx into 400 (its own tree)
    assert info.value.transient is transient
    assert not isinstance(info.value, ProviderTimeout)
    if status == 429:
        assert info.value.retry_after_s == 3.0
    assert "sim" not in (info.value.body or "").split()  # the dummy key is never echoed


@pytest.mark.parametrize("model", WIRES)
@pytest.mark.parametrize("status", [408, 409, 425, 502, 504])
async def test_sdk_statuses_a_provider_answers_stay_statuses(sim: Simulator, sim_client: LLMClient, model: str,
                                                             status: int) -> None:
    """A provider's 408 answer is a transient status, not a timeout of ours."""
    sim.fail(Failure(status))
    with pytest.raises(ProviderError) as info:
        await sim_client.complete(model=model, messages=msgs("worker", "x"), max_tokens=10)
    assert info.value.status == status and info.value.transient
    assert not isinstance(info.value, ProviderTimeout)


@pytest.mark.parametrize("model", WIRES)
@pytest.mark.parametrize(("header", "value", "expected"), [
    ("retry-after", "7", 7.0),
    ("retry-after-ms", "1500", 1.5),
])
async def test_retry_after_is_read_in_each_form(sim: Simulator, sim_client: LLMClient, model: str,
                                                header: str, value: str, expected: float) -> None:
    sim.fail(Failure(429, headers={header: value}))
    with pytest.raises(ProviderError) as info:
        await sim_client.complete(model=model, messages=msgs("worker", "x"), max_tokens=10)
    assert info.value.retry_after_s == pytest.approx(expected)


def test_retry_after_parses_seconds_dates_and_nonsense() -> None:
    from email.utils import formatdate

    from compound.llm.errors import retry_after

    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert 50 < (retry_after({"retry-after": formatdate(__import__("time").time() + 60, usegmt=True)}) or 0) <= 60
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None and retry_after(None) is None


@pytest.mark.parametrize("model", WIRES)
async def test_a_timeout_is_a_transient_timeout(sim: Simulator, client: LLMClient, model: str) -> None:
    sim.fail(Failure(0, hang_s=2))
    with pytest.raises(ProviderTimeout) as info:
        await client.complete(model=model, messages=msgs("worker", "x"), max_tokens=10, timeout_s=0.3)
    assert info.value.transient and info.value.status is None


@pytest.mark.parametrize("model", WIRES)
@pytest.mark.parametrize("adapter", [None, "litellm"])
async def test_a_refused_connection_is_transient(sim_settings: Settings, model: str, adapter: str | None) -> None:
    from compound.simulator import free_port

    base = f"http://127.0.0.1:{free_port()}" + ("/v1" if model.startswith("openai") else "")
    models = {**sim_settings.models, model: ModelConfig(api_base=base, adapter=adapter)}
    client = build_client(sim_settings.model_copy(update={"models": models}))
    with pytest.raises(ProviderError) as info:
        await client.complete(model=model, messages=msgs("worker", "x"), max_tokens=10)
    assert info.value.transient
    if adapter is None:
        assert info.value.status is None  # litellm reports no answer as a 500 of its own


@pytest.mark.parametrize("model", WIRES)
async def test_streaming_yields_deltas_then_usage_and_cost(sim: Simulator, client: LLMClient, model: str) -> None:
    messages = msgs("worker", "<subtask>" + "stream this long enough to take several pieces " * 3 + "</subtask>")
    events = [e async for e in client.stream(model=model, messages=messages, max_tokens=200)]
    deltas = [e for e in events if isinstance(e, Delta)]
    final = events[-1]
    assert isinstance(final, Completion) and all(isinstance(e, Delta) for e in events[:-1])
    assert len(deltas) > 2 and "".join(d.text for d in deltas) == final.text
    assert final.text.startswith("Result of subtask: stream this")
    plain = await client.complete(model=model, messages=messages, max_tokens=200)
    assert final.usage == plain.usage and final.usage.output_tokens > 0
    assert final.cost_usd == pytest.approx(plain.cost_usd, abs=1e-12) and final.cost_usd > 0
    assert sim.calls("worker")[0]["body"]["stream"] is True
    seen: list[str] = []
    again = await collect(client.stream(model=model, messages=messages, max_tokens=200), seen.append)
    assert "".join(seen) == again.text == plain.text


@pytest.mark.parametrize("model", WIRES)
async def test_a_streamed_call_that_fails_raises_a_provider_error(sim: Simulator, client: LLMClient,
                                                                  model: str) -> None:
    sim.fail(Failure(529, retry_after=2))
    with pytest.raises(ProviderError) as info:
        async for _event in client.stream(model=model, messages=msgs("worker", "x"), max_tokens=10):
            pass
    assert info.value.status == 529 and info.value.transient and info.value.retry_after_s == 2.0


async def test_the_offline_guard_refuses_a_public_endpoint() -> None:
    for client in (build_client(Settings()), LiteLLMClient(Settings())):
        with pytest.raises(NetworkRefused) as info:
            await client.complete(model="anthropic/claude-haiku-4-5", messages=msgs("worker", "x"), max_tokens=5)
        assert "COMPOUND_ALLOW_REMOTE_MODELS" in info.value.message
    settings = Settings(tier1_models=["openai/gpt-4.1-mini"], openai_api_key=SecretStr("sk-test-0123456789"))
    with pytest.raises(NetworkRefused):
        await build_client(settings).complete(model="openai/gpt-4.1-mini", messages=msgs("worker", "x"), max_tokens=5)
    with pytest.raises(NetworkRefused):
        async for _e in build_client(settings).stream(model="openai/gpt-4.1-mini", messages=msgs("worker", "x"),
                                                      max_tokens=5):
            pass


async def test_provider_base_url_variables_are_honoured(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_BASE_URL", sim.url + "/v1")  # type: ignore[attr-defined]
    client = build_client(Settings(tier1_models=WIRES))
    for model in WIRES:
        out = await client.complete(model=model, messages=msgs("worker", "<subtask>hi</subtask>"), max_tokens=20)
        assert "hi" in out.text
    assert len(sim.calls("worker")) == 2


async def test_no_key_for_a_public_endpoint_fails_fast_and_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_ALLOW_REMOTE_MODELS", "true")
    for client in (build_client(Settings()), LiteLLMClient(Settings())):
        for model, var in (("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY"),
                           ("openai/gpt-4.1-mini", "OPENAI_API_KEY")):
            with pytest.raises(ProviderError) as info:
                await client.complete(model=model, messages=msgs("worker", "x"), max_tokens=5)
            assert var in info.value.message and info.value.transient is False


async def test_unprefixed_model_names_reach_their_provider(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_BASE_URL", sim.url + "/v1")  # type: ignore[attr-defined]
    client = build_client(Settings())
    for model, wire in (("claude-haiku-4-5", "anthropic"), ("gpt-4.1-mini", "openai")):
        await client.complete(model=model, messages=msgs("worker", "<subtask>x</subtask>"), max_tokens=10)
        assert sim.calls("worker")[-1]["wire"] == wire
        assert sim.calls("worker")[-1]["model"] == model


@pytest.mark.parametrize("model", WIRES)
async def test_the_key_in_use_never_leaves_in_an_error(sim: Simulator, sim_settings: Settings, model: str) -> None:
    key = "gw-0123456789abcdef"  # a gateway key no pattern knows, echoed back by the server
    settings = sim_settings.model_copy(update={"anthropic_api_key": SecretStr(key), "openai_api_key": SecretStr(key)})
    sim.fail(Failure(401, message=f"invalid key {key} for this route"))
    with pytest.raises(ProviderError) as info:
        await build_client(settings).complete(model=model, messages=msgs("worker", "x"), max_tokens=5)
    assert info.value.status == 401
    assert key not in info.value.message and key not in (info.value.body or "") and key not in str(info.value)
    assert "[redacted]" in info.value.message


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        ("anthropic/claude-haiku-4-5", Usage(1234, 567)),
        ("anthropic/claude-sonnet-4-5", Usage(1000, 2000, cache_read_tokens=300, cache_write_tokens=50)),
        ("openai/gpt-4.1-mini", Usage(812, 240)),
        ("openai/gpt-4.1-mini", Usage(800, 100, cache_read_tokens=400)),
    ],
)
def test_cost_equals_litellms_completion_cost(model: str, usage: Usage) -> None:
    ours = price_of(model, Settings()).cost(usage)
    provider = model.split("/", 1)[0]
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    inp, out = litellm.cost_per_token(
        model=model.split("/", 1)[1], custom_llm_provider=provider, prompt_tokens=prompt,
        completion_tokens=usage.output_tokens, cache_read_input_tokens=usage.cache_read_tokens,
        cache_creation_input_tokens=usage.cache_write_tokens)
    assert ours == pytest.approx(inp + out, abs=1e-9)
    assert ours > 0


def test_overrides_win_and_unknown_models_are_refused() -> None:
    settings = Settings(models={"openai/local": ModelConfig(input_cost_per_token=0.0, output_cost_per_token=0.0),
                                "anthropic/claude-haiku-4-5": ModelConfig(input_cost_per_token=1.0,
                                                                          output_cost_per_token=2.0)})
    assert price_of("openai/local", settings).cost(Usage(100, 100)) == 0.0
    assert price_of("anthropic/claude-haiku-4-5", settings).cost(Usage(1, 1)) == 3.0
    with pytest.raises(ConfigError) as info:
        price_of("openai/mystery-model", settings)
    assert "openai/mystery-model" in info.value.message and "input_cost_per_token" in info.value.message
    with pytest.raises(ConfigError) as info2:
        check_prices(Settings(tier2_models=["openai/mystery-a", "openai/mystery-b"]))
    assert "mystery-a" in info2.value.message and "mystery-b" in info2.value.message
    check_prices(Settings())  # the defaults are all priced


def test_the_key_in_use_is_scrubbed_from_provider_errors() -> None:
    from compound.llm.litellm_client import to_provider_error

    key = "gw-0123456789abcdef"  # a gateway key no pattern knows
    err = to_provider_error(RuntimeError(f"401 invalid key {key} for route"), "openai/x", secrets=(key,))
    assert key not in err.message and key not in (err.body or "") and "[redacted]" in err.message


def test_the_price_map_is_litellms_own_read_without_importing_it() -> None:
    import subprocess
    import sys

    from compound.llm.pricing import cost_map

    assert cost_map() == litellm.model_cost
    code = ("import sys; from compound.core.settings import Settings; from compound.llm import build_client; "
            "from compound.llm.pricing import check_prices; s = Settings(); check_prices(s); "
            "build_client(s).complete; print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # SDK-served models never import litellm


@pytest.mark.parametrize(("cls", "kind"), [
    ("anthropic.APITimeoutError", "timeout"), ("openai.APITimeoutError", "timeout"),
    ("anthropic.APIConnectionError", "transient"), ("openai.APIConnectionError", "transient"),
    ("anthropic.RateLimitError", "status"), ("openai.InternalServerError", "status"),
    ("anthropic.APIResponseValidationError", "permanent"), ("openai.APIResponseValidationError", "permanent"),
    ("builtins.ValueError", "permanent"),
])
def test_the_error_table_by_exception_class(cls: str, kind: str) -> None:
    import importlib

    from compound.llm.errors import kind_of

    module, name = cls.rsplit(".", 1)
    exc_type = getattr(importlib.import_module(module), name)
    assert kind_of(exc_type.__new__(exc_type)) == kind


@pytest.mark.parametrize(("status", "transient"), [
    (None, True), (408, True), (409, True), (425, True), (429, True), (500, True), (502, True), (529, True),
    (599, True), (400, False), (401, False), (402, False), (403, False), (404, False), (413, False),
    (418, False), (422, False),
])
def test_the_error_table_by_status(status: int | None, transient: bool) -> None:
    from compound.llm.errors import transient_status

    assert transient_status(status) is transient


@pytest.fixture
async def anthropic_body(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A loopback server answering every Messages API call 200 with the body set on it."""
    from aiohttp import web

    answer: dict[str, bytes] = {"body": b"{}"}

    async def messages(_request: web.Request) -> web.Response:
        return web.Response(body=answer["body"], content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    client = build_client(Settings(anthropic_api_key=SecretStr("k-0123456789abcdef")))
    yield answer, client
    await client.aclose()
    await runner.cleanup()


async def test_an_anthropic_answer_is_read_from_its_json(anthropic_body: Any) -> None:
    answer, client = anthropic_body
    answer["body"] = json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "stop_reason": "tool_use",
        "content": [{"type": "text", "text": "looking "}, {"type": "text", "text": "it up"},
                    {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x"}}],
        "usage": {"input_tokens": 7, "output_tokens": 5, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 3}}).encode()
    out = await client.complete(model="anthropic/claude-haiku-4-5", messages=msgs("worker", "x"), max_tokens=50)
    assert out.text == "looking it up" and out.finish_reason == "tool_use"
    assert out.usage == Usage(input_tokens=7, output_tokens=5, cache_read_tokens=100, cache_write_tokens=3)
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == [("toolu_1", "search", {"q": "x"})]


@pytest.mark.parametrize("body", [b'{"type": "message", "usage": {}}', b'{"content": "text"}', b"[1, 2]",
                                  b'{"content": [1]}', b"not json"])
async def test_an_anthropic_200_that_is_not_a_message_is_a_provider_error(anthropic_body: Any, body: bytes) -> None:
    answer, client = anthropic_body
    answer["body"] = body
    with pytest.raises(ProviderError) as info:
        await client.complete(model="anthropic/claude-haiku-4-5", messages=msgs("worker", "x"), max_tokens=50)
    assert info.value.transient is False and "anthropic/claude-haiku-4-5" in info.value.message


async def test_a_200_that_is_not_a_message_never_shows_the_key(anthropic_body: Any) -> None:
    answer, client = anthropic_body
    answer["body"] = b'{"echo": "your key is k-0123456789abcdef"}'
    with pytest.raises(ProviderError) as info:
        await client.complete(model="anthropic/claude-haiku-4-5", messages=msgs("worker", "x"), max_tokens=50)
    assert "echo" in (info.value.body or "")
    assert "k-0123456789abcdef" not in (info.value.body or "") + str(info.value)


@pytest.mark.parametrize("provider_set", [False, True])
def test_the_anthropic_sdks_spans_are_on_only_when_a_tracer_provider_is_set(
        sim_settings: Settings, monkeypatch: pytest.MonkeyPatch, provider_set: bool) -> None:
    from opentelemetry import trace

    if provider_set:
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.NoOpTracerProvider())
    registry = build_client(sim_settings)
    adapter = registry.adapters["anthropic"]  # type: ignore[attr-defined]
    model = next(m for m in sim_settings.all_models() if m.startswith("anthropic/"))
    _endpoint, sdk = adapter.prepare(model)
    assert sdk.open_telemetry["traces"]["enabled"] is provider_set
