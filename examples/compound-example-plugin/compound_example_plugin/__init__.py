"""An example compound plugin: the `word_count` step kind and the `banned_words` hook."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from compound.plugins import Outcome, StepContext, StepResult, SubtaskView, Veto

_WORD = re.compile(r"\w+(?:['-]\w+)*")
# A pretend price, so the budget has something to hold: $0.000001 a word counted.
WORD_PRICE_USD = 1e-6
# Words counted of the dependencies' results at most (their size is not known before).
MAX_WORDS = 10_000


class WordCount:
    """A step kind: how many words a text has (no model, no network)."""

    name = "word_count"
    description = "Count the words of a text (the argument text, else the results of its dependencies)."
    arguments_schema: dict[str, Any] = {  # noqa: RUF012 (read by compound, never changed)
        "type": "object",
        "properties": {"text": {"type": "string"}, "label": {"type": "string"}},
        "additionalProperties": False,
    }

    def worst_case_usd(self, arguments: dict[str, Any]) -> float:
        """A text of n characters has at most n words."""
        text = arguments.get("text")
        return WORD_PRICE_USD * (len(text) if isinstance(text, str) else MAX_WORDS)

    async def run(self, ctx: StepContext) -> StepResult:
        text = ctx.arguments.get("text")
        if text is None:
            text = "\n".join(ctx.dependencies[i] for i in sorted(ctx.dependencies))
        count = min(len(_WORD.findall(text)), MAX_WORDS)
        label = ctx.arguments.get("label") or "words"
        return StepResult(text=f"{count} {label}", cost_usd=WORD_PRICE_USD * count)


class BannedWords:
    """A hook: vetoes a subtask whose description names a word of
    EXAMPLE_PLUGIN_BANNED_WORDS (comma-separated); appends each subtask's outcome to the
    JSON-lines file EXAMPLE_PLUGIN_RECORD when it is set. Both are read at each call."""

    name = "banned_words"

    async def before(self, subtask: SubtaskView) -> Veto | None:
        banned = [w.strip().lower() for w in os.environ.get("EXAMPLE_PLUGIN_BANNED_WORDS", "").split(",")]
        words = {w.lower() for w in _WORD.findall(subtask.description)}
        hit = next((w for w in banned if w and w in words), None)
        return Veto(f"its description names the banned word {hit!r}") if hit else None

    async def after(self, subtask: SubtaskView, outcome: Outcome) -> None:
        record = os.environ.get("EXAMPLE_PLUGIN_RECORD")
        if not record:
            return
        line = json.dumps({"task_id": subtask.task_id, "index": subtask.index, "kind": subtask.kind,
                           "status": outcome.status, "result": outcome.result, "error": outcome.error})
        with open(record, "a", encoding="utf-8") as f:
            f.write(line + "\n")
