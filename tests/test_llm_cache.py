"""Prompt caching over HTTP: a task's subtask calls share a marked prefix (the system
prompt and the request); the simulator reads it from cache the way Anthropic does, and
the adapter accounts cache writes and reads at their prices. Reservations by table."""

from __future__ import annotations

import pytest

from compound.core.money import PER_CALL_OVERHEAD_TOKENS, input_token_bound, worst_case_usd
from compound.core.settings import Settings
from compound.llm import LLMClient, collect
from compound.llm.base import Message, Price
from compound.llm.pricing import price_of
from compound.prompts import render
from compound.simulator import Simulator

HAIKU = "anthropic/claude-haiku-4-5"
LONG = "Compare these vendors on price, support and uptime. " * 120  # ~1,500 tokens


def subtask(request: str, description: str) -> list[Message]:
    return render("subtask", request=request, description=description, dependencies=[(0, "earlier result")])


def test_the_subtask_prompt_puts_the_shared_prefix_first_and_marks_it() -> None:
    a, b = subtask(LONG, "find prices"), subtask(LONG, "find uptime")
    assert a[:2] == b[:2] and a[2] != b[2]  # identical prefix, then what differs
    assert a[1].get("cache") is True and "<request>" in a[1]["content"] and "<subtask>" not in a[1]["content"]
    assert not a[0].get("cache") and not a[2].get("cache")
    assert all(not m.get("cache") for m in render("decompose", request="x", max_subtasks=3))
    assert all(not m.get("cache") for m in render("synthesize", request="x", results=[(0, "d", "r")]))


async def test_later_calls_of_a_task_read_the_prefix_from_cache(sim: Simulator, sim_client: LLMClient) -> None:
    first = await sim_client.complete(model=HAIKU, messages=subtask(LONG, "find prices"), max_tokens=100)
    second = await sim_client.complete(model=HAIKU, messages=subtask(LONG, "find uptime"), max_tokens=100)
    streamed = await collect(sim_client.stream(model=HAIKU, messages=subtask(LONG, "find support"), max_tokens=100))
    assert first.usage.cache_write_tokens > 1024 and first.usage.cache_read_tokens == 0
    for later in (second, streamed):
        assert later.usage.cache_read_tokens == first.usage.cache_write_tokens
        assert later.usage.cache_write_tokens == 0
        assert later.usage.input_tokens < first.usage.input_tokens + first.usage.cache_write_tokens
    price = price_of(HAIKU, Settings())
    for out in (first, second, streamed):
        assert out.cost_usd == pytest.approx(price.cost(out.usage), abs=1e-12)
    assert second.cost_usd < first.cost_usd  # a read costs a tenth of input, a write 1.25x
    body = sim.calls("worker")[0]["body"]
    blocks = body["messages"][0]["content"]
    assert len(body["messages"]) == 1 and len(blocks) == 2  # the request and the subtask: one user turn
    assert blocks[0]["cache_control"] == {"type": "ephemeral"} and "<request>" in blocks[0]["text"]
    assert "cache_control" not in blocks[1]


async def test_a_short_prefix_is_not_cached_and_an_expired_one_is_written_again(sim: Simulator,
                                                                                sim_client: LLMClient) -> None:
    short = await sim_client.complete(model=HAIKU, messages=subtask("a short request", "x"), max_tokens=50)
    assert short.usage.cache_write_tokens == 0 and short.usage.cache_read_tokens == 0
    sim.script.cache_ttl_s = 0.0
    one = await sim_client.complete(model=HAIKU, messages=subtask(LONG, "a"), max_tokens=50)
    two = await sim_client.complete(model=HAIKU, messages=subtask(LONG, "b"), max_tokens=50)
    assert one.usage.cache_write_tokens == two.usage.cache_write_tokens > 0
    assert two.usage.cache_read_tokens == 0


async def test_another_model_has_its_own_cache(sim_client: LLMClient) -> None:
    await sim_client.complete(model=HAIKU, messages=subtask(LONG, "a"), max_tokens=50)
    other = await sim_client.complete(model="anthropic/claude-sonnet-4-5", messages=subtask(LONG, "a"), max_tokens=50)
    assert other.usage.cache_read_tokens == 0 and other.usage.cache_write_tokens > 0


@pytest.mark.parametrize("adapter", [None, "litellm"])
async def test_the_openai_wire_gets_plain_messages(sim: Simulator, sim_settings: Settings,
                                                   adapter: str | None) -> None:
    from compound.llm import build_client

    model = "openai/gpt-4.1-mini"
    models = {**sim_settings.models, model: sim_settings.models[model].model_copy(update={"adapter": adapter})}
    client = build_client(sim_settings.model_copy(update={"models": models}))
    out = await client.complete(model=model, messages=subtask(LONG, "a"), max_tokens=50)
    sent = sim.calls("worker")[0]["body"]["messages"]
    assert [set(m) for m in sent] == [{"role", "content"}] * 3  # no cache marker leaks onto the wire
    assert out.usage.cache_write_tokens == 0


P = Price(input=1e-6, output=5e-6, cache_read=1e-7, cache_write=1.25e-6)


@pytest.mark.parametrize(
    ("messages", "dear_part"),
    [
        # no marker: no cache write can happen, every input token at the input rate
        ([{"role": "system", "content": "s" * 100}, {"role": "user", "content": "u" * 50}], 0),
        # a marker: the prefix up to it (and the call's framing) at the dearest rate
        ([{"role": "system", "content": "s" * 100}, {"role": "user", "content": "r" * 400, "cache": True},
          {"role": "user", "content": "u" * 50}], 2),
        # the marker on the last message: everything is prefix
        ([{"role": "system", "content": "s" * 100, "cache": True}], 1),
    ],
)
def test_reservations_use_the_dearest_rate_only_where_a_cache_write_can_happen(
        messages: list[Message], dear_part: int) -> None:
    max_tokens = 100
    got = worst_case_usd(messages, max_tokens, P)
    dear = input_token_bound(messages[:dear_part]) if dear_part else 0
    plain = input_token_bound(messages) - dear
    assert got == pytest.approx(dear * P.cache_write + plain * P.input + max_tokens * P.output, rel=1e-12)
    assert got <= input_token_bound(messages) * P.cache_write + max_tokens * P.output
    assert got >= input_token_bound(messages) * P.input + max_tokens * P.output
    if dear_part:
        assert plain == input_token_bound(messages[dear_part:]) - PER_CALL_OVERHEAD_TOKENS


async def test_concurrent_calls_sharing_a_new_prefix_write_it_once(sim: Simulator, sim_client: LLMClient) -> None:
    """The first call of a new prefix goes alone; the others wait for its answer to
    begin and read the entry it wrote."""
    import asyncio

    sim.script.latency_s = 0.2
    outs = await asyncio.gather(*(sim_client.complete(model=HAIKU, messages=subtask(LONG, f"part {i}"),
                                                      max_tokens=50) for i in range(5)))
    writes = [o.usage.cache_write_tokens for o in outs]
    reads = [o.usage.cache_read_tokens for o in outs]
    assert sorted(w > 0 for w in writes) == [False] * 4 + [True]
    assert sorted(r > 0 for r in reads) == [False] + [True] * 4
    assert [c["body"].get("stream", False) for c in sim.calls("worker")].count(True) == 1  # the writer streamed
    later = await sim_client.complete(model=HAIKU, messages=subtask(LONG, "part 9"), max_tokens=50)
    assert later.usage.cache_read_tokens > 0  # a warm prefix goes at once


async def test_the_simulator_misses_a_prefix_still_being_written(sim: Simulator) -> None:
    """Without the adapter's ordering, parallel calls each write (as Anthropic bills them)."""
    import asyncio

    import anthropic

    sim.script.latency_s = 0.2
    client = anthropic.AsyncAnthropic(api_key="sim", base_url=sim.url, max_retries=0)  # type: ignore[attr-defined]
    block: anthropic.types.TextBlockParam = {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}

    async def one(i: int) -> anthropic.types.Usage:
        msg = await client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=[
            {"role": "user", "content": [block, {"type": "text", "text": f"<subtask>{i}</subtask>"}]}])
        return msg.usage

    usages = await asyncio.gather(*(one(i) for i in range(3)))
    assert all(u.cache_creation_input_tokens and not u.cache_read_input_tokens for u in usages)
    after = await one(9)
    assert after.cache_read_input_tokens == usages[0].cache_creation_input_tokens
    await client.close()
