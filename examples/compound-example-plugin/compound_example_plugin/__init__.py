"""An example compound plugin: the `word_count` step kind and the `banned_words` hook."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from compound.plugins import Outcome, StepContext, StepResult, SubtaskView, Veto

_WORD = re.compile(r"\w+(?:['-]\w+)*")


class WordCount:
    """A step kind: how many words a text has (no model, no network, no cost)."""

    name = "word_count"
    description = "Count the words of a text (the argument text, else the results of its dependencies)."
    arguments_schema: dict[str, Any] = {  # noqa: RUF012 (read by compound, never changed)
        "type": "object",
        "properties": {"text": {"type": "string"}, "label": {"type": "string"}},
        "additionalProperties": False,
    }

    def worst_case_usd(self, arguments: dict[str, Any]) -> float:  # noqa: ARG002 (the protocol's shape)
        return 0.0

    async def run(self, ctx: StepContext) -> StepResult:
        text = ctx.arguments.get("text")
        if text is None:
            text = "\n".join(ctx.dependencies[i] for i in sorted(ctx.dependencies))
        count = len(_WORD.findall(text))
        label = ctx.arguments.get("label") or "words"
        return StepResult(text=f"{count} {label}", cost_usd=0.0)


class BannedWords:
    """A hook: vetoes subtasks whose description names a banned word; records outcomes."""

    name = "banned_words"

    def __init__(self) -> None:
        raw = os.environ.get("EXAMPLE_PLUGIN_BANNED_WORDS", "")
        self.banned = [w.strip().lower() for w in raw.split(",") if w.strip()]
        self.record = os.environ.get("EXAMPLE_PLUGIN_RECORD") or None

    async def before(self, subtask: SubtaskView) -> Veto | None:
        words = {w.lower() for w in _WORD.findall(subtask.description)}
        hit = next((w for w in self.banned if w in words), None)
        return Veto(f"its description names the banned word {hit!r}") if hit else None

    async def after(self, subtask: SubtaskView, outcome: Outcome) -> None:
        if self.record is None:
            return
        line = json.dumps({"task_id": subtask.task_id, "index": subtask.index, "kind": subtask.kind,
                           "status": outcome.status, "result": outcome.result, "error": outcome.error})
        with open(self.record, "a", encoding="utf-8") as f:
            f.write(line + "\n")
