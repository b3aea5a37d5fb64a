"""The LLM seam over real HTTP: the litellm adapter against the provider simulator
for both wire formats, pricing against litellm's own arithmetic, the offline guard."""

from __future__ import annotations

import litellm
import pytest

from compound.core.errors import ConfigError, NetworkRefused, ProviderError
from compound.core.settings import ModelConfig, Settings
from compound.llm.base import Usage
from compound.llm.litellm_client import LiteLLMClient
from compound.llm.pricing import check_prices, price_of
from compound.llm.simulator import Failure, Simulator
from compound.planner.validate import validate_plan

WIRES = ["anthropic/claude-haiku-4-5", "openai/gpt-4.1-mini"]


def msgs(kind: str, body: str) -> list:  # type: ignore[type-arg]
    return [{"role": "system", "content": f"You are compound's {kind}.\nrules"},
            {"role": "user", "content": body}]


@pytest.mark.parametrize("model", WIRES)
async def test_a_call_returns_text_usage_and_cost(sim: Simulator, sim_client: LiteLLMClient, model: str) -> None:
    out = await sim_client.complete(model=model, messages=msgs("worker", "<subtask>count to 3</subtask>"),
                                    max_tokens=100)
    assert out.text.startswith("Result of subtask: count to 3")
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    assert out.cost_usd == pytest.approx(price_of(model, sim_client.settings).cost(out.usage), abs=1e-12)
    seen = sim.calls("worker")
    assert len(seen) == 1 and seen[0]["model"] == model.split("/", 1)[1]
    assert seen[0]["wire"] == model.split("/", 1)[0]
    assert seen[0]["body"]["max_tokens"] == 100


@pytest.mark.parametrize("model", WIRES)
async def test_planner_answers_validate(sim_client: LiteLLMClient, model: str) -> None:
    out = await sim_client.complete(
        model=model, messages=msgs("planner", "<request>find a and compare b; then decide</request>"),
        max_tokens=1000)
    import json

    plan = validate_plan(json.loads(out.text), max_subtasks=20)
    assert len(plan.subtasks) >= 2 and plan.subtasks[-1].depends_on


@pytest.mark.parametrize("model", WIRES)
@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (529, True),
                                                   (400, False), (401, False)])
async def test_errors_map_to_provider_errors(sim: Simulator, sim_client: LiteLLMClient, model: str,
                                             status: int, transient: bool) -> None:
    sim.fail(Failure(status, retry_after=3 if status == 429 else None))
    with pytest.raises(ProviderError) as info:
        await sim_client.complete(model=model, messages=msgs("worker", "x"), max_tokens=10)
    assert info.value.status == status
    assert info.value.transient is transient
    if status == 429:
        assert info.value.retry_after_s == 3.0
    assert "sim" not in (info.value.body or "").split()  # the dummy key is never echoed


@pytest.mark.parametrize("model", WIRES)
async def test_a_timeout_is_transient(sim: Simulator, sim_client: LiteLLMClient, model: str) -> None:
    sim.fail(Failure(0, hang_s=2))
    with pytest.raises(ProviderError) as info:
        await sim_client.complete(model=model, messages=msgs("worker", "x"), max_tokens=10, timeout_s=0.3)
    assert info.value.transient


async def test_the_offline_guard_refuses_a_public_endpoint() -> None:
    client = LiteLLMClient(Settings())
    with pytest.raises(NetworkRefused) as info:
        await client.complete(model="anthropic/claude-haiku-4-5", messages=msgs("worker", "x"), max_tokens=5)
    assert "COMPOUND_ALLOW_REMOTE_MODELS" in info.value.message


async def test_provider_base_url_variables_are_honoured(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_BASE_URL", sim.url + "/v1")  # type: ignore[attr-defined]
    client = LiteLLMClient(Settings())
    for model in WIRES:
        out = await client.complete(model=model, messages=msgs("worker", "<subtask>hi</subtask>"), max_tokens=20)
        assert "hi" in out.text
    assert len(sim.calls("worker")) == 2


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


async def test_a_server_that_refuses_json_schema_is_asked_again_without_it(sim: Simulator,
                                                                          sim_client: LiteLLMClient) -> None:
    sim.fail(Failure(400, kind="planner"))
    out = await sim_client.complete(model="openai/gpt-4.1-mini", max_tokens=500, json_schema={"type": "object"},
                                    messages=msgs("planner", "<request>a and b</request>"))
    calls = sim.calls("planner")
    assert len(calls) == 2 and "response_format" in calls[0]["body"] and "response_format" not in calls[1]["body"]
    assert out.text.startswith("{")


async def test_no_key_for_a_public_endpoint_fails_fast_and_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOUND_ALLOW_REMOTE_MODELS", "true")
    client = LiteLLMClient(Settings())
    for model, var in (("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY"), ("openai/gpt-4.1-mini", "OPENAI_API_KEY")):
        with pytest.raises(ProviderError) as info:
            await client.complete(model=model, messages=msgs("worker", "x"), max_tokens=5)
        assert var in info.value.message and info.value.transient is False


async def test_unprefixed_model_names_reach_their_provider(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_BASE_URL", sim.url + "/v1")  # type: ignore[attr-defined]
    client = LiteLLMClient(Settings())
    for model, wire in (("claude-haiku-4-5", "anthropic"), ("gpt-4.1-mini", "openai")):
        await client.complete(model=model, messages=msgs("worker", "<subtask>x</subtask>"), max_tokens=10)
        assert sim.calls("worker")[-1]["wire"] == wire


def test_the_key_in_use_is_scrubbed_from_provider_errors() -> None:
    from compound.llm.litellm_client import to_provider_error

    key = "gw-0123456789abcdef"  # a gateway key no pattern knows
    err = to_provider_error(RuntimeError(f"401 invalid key {key} for route"), "openai/x", secrets=(key,))
    assert key not in err.message and key not in (err.body or "") and "[redacted]" in err.message
