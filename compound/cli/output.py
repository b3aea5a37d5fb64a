"""What the CLI prints after a task: its error, the money held for calls canceled in
flight, and the answer (Markdown in a terminal, raw text when piped). User and model
text never goes through Rich markup."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.text import Text


def clip(text: str, width: int) -> str:
    """`text` on one line in at most `width` characters, cut at a word with an ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    cut = flat[: max(1, width - 1)]
    if " " in cut[width // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.") + "…"


def held_usd(snap: dict[str, Any]) -> float:
    """What a task was charged for calls whose outcome is unknown (lost in a crash or a
    timeout, or canceled in flight), each counted at its worst case: the snapshot's
    `worst_case`."""
    return float((snap.get("worst_case") or {}).get("cost_usd") or 0.0)


def print_outcome(console: Console, snap: dict[str, Any]) -> None:
    """The task's error and, when it stopped early, what the cost so far is made of."""
    status = snap["status"]
    if snap.get("error"):
        console.print(Text.assemble(("error: ", "bold red"), snap["error"]))
    if status in ("canceled", "failed", "partial"):
        held = held_usd(snap) if status == "canceled" else 0.0
        line = f"cost so far ${snap['total_cost_usd']:.6f} of ${snap['budget_usd']:g}"
        if held > 0:
            line += (f", of which ${held:.6f} is held for calls canceled in flight: their outcome is "
                     "unknown, so they count at their worst case")
        console.print(Text(line))


def print_notice(console: Console, snap: dict[str, Any]) -> None:
    """What the server says about a waiting task (queue mode: no worker is alive)."""
    if snap.get("notice"):
        console.print(Text.assemble(("note: ", "bold yellow"), str(snap["notice"])))


def print_answer(console: Console, text: str | None) -> None:
    """The answer: rendered as Markdown on a terminal, the raw text when piped."""
    if not text:
        return
    if console.is_terminal:
        console.print(Markdown(text))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
