"""A tool loop's bounds on its calls (steps.py), and the signature by which two calls
are the same call."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from compound.llm.base import ToolCall


def call_signature(tool: str, arguments: dict[str, Any]) -> str:
    """A call's tool and arguments as one canonical string: equal for the same call."""
    return json.dumps([tool, arguments], sort_keys=True, separators=(",", ":"))


class CallBounds:
    """A tool loop's bounds on its calls, admitted one at a time in the order asked:
    in all, per tool, and the same call three times in a row."""

    def __init__(self, max_calls: int, max_per_tool: int) -> None:
        self.max_calls, self.max_per_tool = max_calls, max_per_tool
        self.made = self.streak = 0
        self.per_tool: Counter[str] = Counter()
        self.last: str | None = None

    def refuses(self, tc: ToolCall) -> str | None:
        """Why this call may not run (None: it is admitted, and counted)."""
        sig = call_signature(tc.name, tc.arguments)
        run = self.streak + 1 if sig == self.last else 1
        if self.made >= self.max_calls:
            return f"the limit of {self.max_calls} tool calls was reached"
        if self.per_tool[tc.name] >= self.max_per_tool:
            return f"the limit of {self.max_per_tool} calls of {tc.name} was reached"
        if run >= 3:
            return f"the same call of {tc.name} was asked for three times in a row"
        self.last, self.streak = sig, run
        self.made += 1
        self.per_tool[tc.name] += 1
        return None
