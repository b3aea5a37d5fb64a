"""Plan-graph scores as WorFBench defines them (node, edge, chain and graph F1), over
a predicted and a gold graph whose steps are matched by text similarity.

Pure: the similarity is given as a matrix; scipy's linear_sum_assignment finds the
maximum-weight matching. See docs/evals.md for the definitions and where they differ
from WorFBench's evaluator/graph_evaluator.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

MAX_ORDERS = 20  # WorFBench compares against at most 20 topological orders of the gold
MANY_NODES = 10  # ... and against the gold's own order alone from 10 nodes (START, END included)


@dataclass(frozen=True)
class Graph:
    """Steps (texts) and edges (u, v): step u comes before step v. 0-based, no START/END."""

    nodes: list[str]
    edges: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def from_deps(cls, nodes: Sequence[str], deps: Sequence[Sequence[int]]) -> Graph:
        return cls(list(nodes), sorted({(d, i) for i, ds in enumerate(deps) for d in ds}))

    def deps(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.nodes]
        for u, v in self.edges:
            if u not in out[v]:
                out[v].append(u)
        return out


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@dataclass(frozen=True)
class Scores:
    node: PRF
    edge: PRF
    chain: PRF
    graph: PRF
    matched: dict[int, int]  # predicted step -> gold step


def match_nodes(similarity: Sequence[Sequence[float]], threshold: float) -> dict[int, int]:
    """Maximum-weight bipartite matching of predicted (rows) to gold (columns) steps,
    over pairs whose similarity is above the threshold."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    sim = np.asarray(similarity, dtype=float)
    if sim.size == 0:
        return {}
    weights = np.where(sim > threshold, sim, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if weights[r, c] > 0}


def _ratio(hit: int, total: int, *, empty: float) -> float:
    return empty if total == 0 else hit / total


def node_prf(n_pred: int, n_gold: int, matched: dict[int, int]) -> PRF:
    return PRF(_ratio(len(matched), n_pred, empty=0.0), _ratio(len(matched), n_gold, empty=0.0))


def edge_prf(pred: Graph, gold: Graph, matched: dict[int, int]) -> PRF:
    """A predicted edge counts when both ends are matched and the gold has the same
    edge between their matches. Two graphs without edges agree: 1.0."""
    gold_edges = set(gold.edges)
    hit = sum(1 for u, v in set(pred.edges)
              if u in matched and v in matched and (matched[u], matched[v]) in gold_edges)
    both_empty = not pred.edges and not gold_edges
    return PRF(_ratio(hit, len(set(pred.edges)), empty=1.0 if both_empty else 0.0),
               _ratio(hit, len(gold_edges), empty=1.0 if both_empty else 0.0))


def topological_orders(n: int, edges: Sequence[tuple[int, int]], limit: int = MAX_ORDERS) -> list[list[int]]:
    """Up to `limit` topological orders, lexicographically first ones first."""
    preds = [0] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for u, v in set(edges):
        preds[v] += 1
        children[u].append(v)
    out: list[list[int]] = []

    def walk(order: list[int], placed: list[bool]) -> Iterator[list[int]]:
        if len(order) == n:
            yield list(order)
            return
        for i in range(n):
            if not placed[i] and preds[i] == 0:
                placed[i] = True
                order.append(i)
                for c in children[i]:
                    preds[c] -= 1
                yield from walk(order, placed)
                for c in children[i]:
                    preds[c] += 1
                order.pop()
                placed[i] = False

    for order in walk([], [False] * n):
        out.append(order)
        if len(out) >= limit:
            break
    return out


def _lis(seq: Sequence[int]) -> int:
    """Length of the longest strictly increasing subsequence (patience sorting)."""
    import bisect

    tails: list[int] = []
    for x in seq:
        k = bisect.bisect_left(tails, x)
        if k == len(tails):
            tails.append(x)
        else:
            tails[k] = x
    return len(tails)


def chain_prf(pred: Graph, gold: Graph, matched: dict[int, int]) -> PRF:
    """The predicted steps in the order they are listed, matched to gold steps: the
    longest run that follows one of the gold's topological orders, best over orders."""
    if not pred.nodes or not gold.nodes:
        return PRF(0.0, 0.0)
    pred_seq = list(range(len(pred.nodes)))
    if len(gold.nodes) + 2 >= MANY_NODES:
        orders = [list(range(len(gold.nodes)))]
    else:
        orders = topological_orders(len(gold.nodes), gold.edges) or [list(range(len(gold.nodes)))]
    best = PRF(0.0, 0.0)
    for order in orders:
        position = {g: k for k, g in enumerate(order)}
        run = _lis([position[matched[p]] for p in pred_seq if p in matched])
        got = PRF(run / len(pred.nodes), run / len(gold.nodes))
        if got.f1 > best.f1:
            best = got
    return best


def with_ends(g: Graph) -> Graph:
    """START (0) before every root, every leaf before END (n+1), steps shifted by one."""
    n = len(g.nodes)
    has_pred = {v for _, v in g.edges}
    has_succ = {u for u, _ in g.edges}
    edges = [(u + 1, v + 1) for u, v in g.edges]
    edges += [(0, i + 1) for i in range(n) if i not in has_pred]
    edges += [(i + 1, n + 1) for i in range(n) if i not in has_succ]
    return Graph(["START", *g.nodes, "END"], sorted(set(edges)))


def graph_prf(pred: Graph, gold: Graph, matched: dict[int, int]) -> PRF:
    """WorFBench's graph score: with START and END added to both graphs (and matched to
    each other), the largest connected component of matched nodes joined by edges both
    graphs have; precision over the predicted nodes, recall over the gold's."""
    p, g = with_ends(pred), with_ends(gold)
    m = {k + 1: v + 1 for k, v in matched.items()}
    m[0], m[len(p.nodes) - 1] = 0, len(g.nodes) - 1
    gold_edges = set(g.edges)
    parent = {v: v for v in m.values()}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in p.edges:
        if u in m and v in m and (m[u], m[v]) in gold_edges:
            parent[find(m[u])] = find(m[v])
    sizes: dict[int, int] = {}
    for v in parent:
        root = find(v)
        sizes[root] = sizes.get(root, 0) + 1
    largest = max(sizes.values())
    return PRF(largest / len(p.nodes), largest / len(g.nodes))


def score(pred: Graph, gold: Graph, similarity: Sequence[Sequence[float]], threshold: float) -> Scores:
    matched = match_nodes(similarity, threshold)
    return Scores(node=node_prf(len(pred.nodes), len(gold.nodes), matched),
                  edge=edge_prf(pred, gold, matched), chain=chain_prf(pred, gold, matched),
                  graph=graph_prf(pred, gold, matched), matched=matched)
