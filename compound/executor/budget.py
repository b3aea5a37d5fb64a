"""Budget arithmetic (pure): the worst case of a call before it is sent.

The input bound needs no network and no tokenizer: a token is at least one byte of
UTF-8 for every tokenizer in use (BPE vocabularies start from bytes), so the byte
length of the messages bounds their token count. A fixed allowance per message
covers the role and framing tokens the provider adds.
"""

from __future__ import annotations

from collections.abc import Sequence

from compound.llm.base import Message, Price

PER_MESSAGE_OVERHEAD_TOKENS = 16
PER_CALL_OVERHEAD_TOKENS = 64  # system-prompt framing, tool/format scaffolding


def input_token_bound(messages: Sequence[Message]) -> int:
    """An upper bound on the input tokens of these messages, without a tokenizer."""
    total = PER_CALL_OVERHEAD_TOKENS
    for m in messages:
        total += len(m["content"].encode("utf-8")) + PER_MESSAGE_OVERHEAD_TOKENS
    return total


def worst_case_usd(messages: Sequence[Message], max_tokens: int, price: Price) -> float:
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
