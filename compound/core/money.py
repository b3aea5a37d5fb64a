"""Money (pure): prices per token, a call's cost, and the worst case of a call before
it is sent (what a reservation holds against a budget).

The input bound needs no network and no tokenizer: a token is at least one byte of
UTF-8 for every tokenizer in use (BPE vocabularies start from bytes), so the byte
length of the messages bounds their token count. A fixed allowance per message
covers the role and framing tokens the provider adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PER_MESSAGE_OVERHEAD_TOKENS = 16
PER_CALL_OVERHEAD_TOKENS = 64  # system-prompt framing, tool/format scaffolding


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
    """Most a call can cost: every input token at the dearest input rate (a cache
    write may cost more than plain input) and max_tokens of output."""
    input_rate = max(price.input, price.cache_write, price.cache_read)
    return input_token_bound(messages) * input_rate + max_tokens * price.output
