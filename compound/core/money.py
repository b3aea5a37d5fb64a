"""Money (pure): prices per token, a call's cost, the worst case of a call before it
is sent (what a reservation holds against a budget), and money as it is shown.

The input bound needs no network and no tokenizer: a token is at least one byte of
UTF-8 for every tokenizer in use (BPE vocabularies start from bytes), so the byte
length of the messages bounds their token count. A fixed allowance per message
covers the role and framing tokens the provider adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PER_MESSAGE_OVERHEAD_TOKENS = 16
PER_CALL_OVERHEAD_TOKENS = 64  # system-prompt framing, tool/format scaffolding
SHOWN_DECIMALS = 6  # money leaves the service rounded to the micro-dollar
MONEY_KEYS = frozenset({"cost", "total_cost"})  # beside every key ending in `_usd`


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens as the provider reported them. input_tokens excludes cache reads and
    cache writes (Anthropic's convention; OpenAI's prompt_tokens is split to match)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token. cache_write applies to prompt-cache creation tokens."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
        )


def input_token_bound(messages: Sequence[Mapping[str, object]]) -> int:
    """An upper bound on the input tokens of these messages, without a tokenizer."""
    total = PER_CALL_OVERHEAD_TOKENS
    for m in messages:
        total += len(str(m["content"]).encode("utf-8")) + PER_MESSAGE_OVERHEAD_TOKENS
    return total


def worst_case_usd(messages: Sequence[Mapping[str, object]], max_tokens: int, price: Price) -> float:
    """Most a call can cost: max_tokens of output, and its input at the plain input
    rate except the prefix marked for caching (up to the last message marked `cache`,
    with the call's framing), which a cache write may bill at a dearer rate."""
    marked = max((i + 1 for i, m in enumerate(messages) if m.get("cache")), default=0)
    if not marked:
        return input_token_bound(messages) * price.input + max_tokens * price.output
    prefix = input_token_bound(messages[:marked])
    rest = input_token_bound(messages[marked:]) - PER_CALL_OVERHEAD_TOKENS
    dearest = max(price.input, price.cache_write, price.cache_read)
    return prefix * dearest + rest * price.input + max_tokens * price.output


def shown_usd(value: float) -> float:
    """USD as every view shows it: rounded to the micro-dollar, so sums of float costs
    carry no noise (0.004481000000000001 -> 0.004481). Stored values keep full precision."""
    return round(float(value), SHOWN_DECIMALS) + 0.0  # + 0.0: never -0.0


def is_money_key(key: str) -> bool:
    return key.endswith("_usd") or key in MONEY_KEYS


_WALKED = (dict, list, float)


def money_shown(value: Any, key: str = "") -> Any:
    """`value` (JSON-like: dicts, lists, numbers) with every money field rounded by
    shown_usd: the values under keys ending in `_usd` (and `cost`, `total_cost`, the
    Symbiont shapes' names), at any depth."""
    # (strings, ints and the like are kept as they are without a call each: a task's
    # snapshot is mostly those)
    if isinstance(value, dict):
        return {k: money_shown(v, k if isinstance(k, str) else "") if isinstance(v, _WALKED) else v
                for k, v in value.items()}
    if isinstance(value, list):
        return [money_shown(v, key) if isinstance(v, _WALKED) else v for v in value]
    if isinstance(value, float) and is_money_key(key):
        return shown_usd(value)
    return value
