"""What the planner sees of the tools: compact cards (name, argument names, one line), at
most MAX_TOOL_CARDS of them; from a bigger catalogue, the ones most relevant to the
request by BM25 over the tools' names, descriptions and argument names (no model call).
Pure: the catalogue comes in as an argument."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# About 25 tokens a card: 16 cost the planner some 400 input tokens, and a small model
# still chooses well among them.
MAX_TOOL_CARDS = 16
# BM25's usual constants (term saturation, length normalisation).
_K1 = 1.2
_B = 0.75
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Za-z][a-z]*|\d+")
_STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "get", "has", "have", "how", "i", "in", "is",
    "it", "its", "me", "my", "of", "on", "or", "our", "please", "set", "show", "tell", "that", "the", "their",
    "them", "then", "this", "to", "use", "was", "what", "when", "where", "which", "who", "will", "with", "you",
    "your"))


class ToolLike(Protocol):
    """What a card needs of a catalogue entry (compound.tools.catalogue.Tool has it)."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def arguments(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class ToolCard:
    name: str
    description: str
    arguments: tuple[str, ...]

    def line(self) -> str:
        head = f"- {self.name}({', '.join(self.arguments)})"
        return f"{head}: {self.description}" if self.description else head


def words(text: str) -> list[str]:
    """Lower-case word stems: snake_case, camelCase, dots and dashes split; a plural's
    or a verb form's common ending dropped, so "incidents" meets "incident"."""
    out = []
    for w in _WORD.findall(text):
        w = w.lower()
        if w not in _STOP:
            out.append(_stem(w))
    return out


def _stem(w: str) -> str:
    if len(w) <= 3:
        return w
    if w.endswith("ies"):
        w = w[:-3] + "y"
    elif w.endswith(("ses", "xes", "zes", "ches", "shes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    elif w.endswith("ing") and len(w) > 5:
        w = w[:-3]
    elif w.endswith("ed") and len(w) > 4:
        w = w[:-2]
    return w[:-1] if w.endswith("e") and len(w) > 3 else w


def relevance(request: str, documents: Sequence[str]) -> list[float]:
    """BM25 of the request against each document."""
    docs = [Counter(words(d)) for d in documents]
    n = len(docs)
    if not n:
        return []
    lengths = [sum(d.values()) for d in docs]
    mean = sum(lengths) / n or 1.0
    df = Counter(t for d in docs for t in d)
    query = set(words(request))
    scores = []
    for d, length in zip(docs, lengths, strict=True):
        score = 0.0
        for t in query:
            f = d.get(t, 0)
            if f:
                idf = math.log((n - df[t] + 0.5) / (df[t] + 0.5) + 1.0)
                score += idf * f * (_K1 + 1) / (f + _K1 * (1 - _B + _B * length / mean))
        scores.append(score)
    return scores


def cards_for(request: str, catalogue: Sequence[ToolLike], *, limit: int = MAX_TOOL_CARDS) -> list[ToolCard]:
    """The cards the planner is shown: the available tools, all of them when they fit
    in `limit`, else the `limit` most relevant to the request (ties: catalogue order).
    Shown in catalogue order either way, so the prompt is stable."""
    tools = [t for t in catalogue if getattr(t, "available", True)]
    if len(tools) > limit:
        scores = relevance(request, [f"{t.name} {t.description} {' '.join(t.arguments)}" for t in tools])
        keep = sorted(sorted(range(len(tools)), key=lambda i: -scores[i])[:limit])
        tools = [tools[i] for i in keep]
    return [ToolCard(t.name, t.description, tuple(t.arguments)) for t in tools]
