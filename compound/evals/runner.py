"""The eval runner: each item through the whole pipeline (plan, run, synthesize) in an
Executor over a store of its own, then its plan scored and its cost set against the
strongest tier; optionally a pairwise judgement against one direct call."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compound.core.errors import CompoundError
from compound.core.settings import Settings
from compound.evals.datasets import Expect, Item
from compound.evals.graph import Graph, score
from compound.evals.similarity import Matcher
from compound.evals.tools import OfferedTools, named_tools, tool_prf
from compound.llm.base import LLMClient, Message, Price, Usage
from compound.planner.plan import critical_path_length, waves
from compound.planner.repair import kind_of

# Warning kinds that are not fixes: the fallback, and a flag on a plan left as it was.
NOT_FIXES = ("fallback", "missing join", "streamed plan cut")


@dataclass
class Judgement:
    verdict: str  # win | tie | loss (compound's answer against the direct answer) | error
    direct_cost_usd: float
    judge_cost_usd: float
    votes: list[str] = field(default_factory=list)  # each order's verdict: compound, direct, tie or ?


@dataclass
class ItemResult:
    id: str
    shape: str
    request: str
    status: str
    valid: bool  # a plan from the model (after repair); never the fallback
    repairs: int  # repair calls to the planner model
    fixes: int  # fixes made without a model (task warnings other than a fallback or a flag)
    subtasks: list[dict[str, Any]]
    width: int
    parallelism: float | None  # critical path / subtasks: 1.0 = a chain, lower = more parallel
    cost_usd: float
    strong_tier_cost_usd: float
    checks: dict[str, bool] = field(default_factory=dict)  # own dataset: expected properties
    node_f1: float | None = None
    edge_f1: float | None = None
    chain_f1: float | None = None
    graph_f1: float | None = None
    judge: Judgement | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    fallback: bool = False  # the planner gave no usable plan: the request ran as one subtask
    missing_join: bool = False  # the plan was flagged: its last step joins only some branches
    fix_kinds: dict[str, int] = field(default_factory=dict)  # fixes by kind (planner/repair.py KINDS)
    # items with a tool catalogue (T-Eval, TaskBench): the tools the plan names, scored
    # as a set against the tools the gold plan uses
    tools: list[str] = field(default_factory=list)
    tool_precision: float | None = None
    tool_recall: float | None = None
    tool_f1: float | None = None
    replans: int = 0  # replanning rounds the task ran
    calls: dict[str, int] = field(default_factory=dict)  # ledger rows by kind (planner, subtask, check, ...)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# expected properties (own dataset): pure ---------------------------------------------

def _find(keyword: str, descriptions: list[str]) -> list[int]:
    words = [w.strip().lower() for w in keyword.split("|") if w.strip()]
    return [i for i, d in enumerate(descriptions) if any(w in d.lower() for w in words)]


def _ancestors(deps: list[list[int]], node: int) -> set[int]:
    seen: set[int] = set()
    stack = list(deps[node])
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(deps[d])
    return seen


def check_expect(expect: Expect, descriptions: list[str], deps: list[list[int]],
                 tiers: list[int]) -> dict[str, bool]:
    """Each expected property of a plan: True when it holds. An ordering holds when some
    subtask naming its first keyword is an ancestor of some subtask naming its second."""
    n = len(descriptions)
    out = {"subtasks": expect.subtasks[0] <= n <= expect.subtasks[1],
           "width": bool(n) and max(len(w) for w in waves(deps)) >= expect.min_width}
    for a, b in expect.orderings:
        firsts, seconds = _find(a, descriptions), _find(b, descriptions)
        out[f"order {a} < {b}"] = any(f in _ancestors(deps, s) for s in seconds for f in firsts)
    for keyword, tier in expect.tiers.items():
        found = _find(keyword, descriptions)
        out[f"tier {keyword} = {tier}"] = bool(found) and all(tiers[i] == tier for i in found)
    return out


# judging ------------------------------------------------------------------------------

JUDGE_SYSTEM = ("You are an impartial judge. Compare two answers to the same request for "
                "correctness, completeness and usefulness. Length is not quality.")
_FIRST_WORD = re.compile(r"[\W_]*(\w+)")


def judge_messages(request: str, first: str, second: str) -> list[Message]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"<request>\n{request}\n</request>\n<answer_a>\n{first}\n</answer_a>\n"
                                        f"<answer_b>\n{second}\n</answer_b>\n"
                                        "Which answer is better? Reply with exactly one word: A, B or tie."}]


def parse_verdict(text: str) -> str:
    """'A', 'B' or 'tie' when the judge's answer starts with that word, else '?'."""
    m = _FIRST_WORD.match(text or "")
    word = m.group(1).lower() if m else ""
    return {"a": "A", "b": "B", "tie": "tie"}.get(word, "?")


def combine(first: str, second: str) -> tuple[str, list[str]]:
    """Two orders (compound as A, then compound as B): a win or a loss only when both
    agree, so a judge's preference for a position cancels out; `error` when either
    verdict could not be read."""
    votes = [{"A": "compound", "B": "direct"}.get(first, first), {"A": "direct", "B": "compound"}.get(second, second)]
    if "?" in votes:
        return "error", votes
    if votes == ["compound", "compound"]:
        return "win", votes
    if votes == ["direct", "direct"]:
        return "loss", votes
    return "tie", votes


# the run ------------------------------------------------------------------------------

@dataclass
class EvalRun:
    settings: Settings
    client: LLMClient
    matcher: Matcher
    price_of: Callable[[str], Price]
    concurrency: int = 4
    judge_model: str | None = None
    on_done: Callable[[ItemResult], None] | None = None

    @property
    def strong_model(self) -> str:
        return self.settings.tier_models(3)[0]

    async def run(self, items: list[Item]) -> list[ItemResult]:
        from compound.executor.service import Executor
        from compound.store import open_store

        with tempfile.TemporaryDirectory(prefix="compound-eval-") as tmp:
            # A store of its own: an eval never writes into the user's task list.
            async with open_store(f"sqlite:///{Path(tmp) / 'eval.db'}") as store:
                executor = Executor(settings=self.settings, store=store, client=self.client,
                                    price_of=self.price_of)
                gate = asyncio.Semaphore(max(1, self.concurrency))

                async def one(item: Item) -> ItemResult:
                    async with gate:
                        if item.tools:
                            result = await self._planned_item(store, item)
                        else:
                            result = await self._item(executor, store, item)
                    if self.on_done is not None:
                        self.on_done(result)
                    return result

                try:
                    return list(await asyncio.gather(*(one(i) for i in items)))
                finally:
                    await executor.stop()

    async def _planned_item(self, store: Any, item: Item) -> ItemResult:
        """An item with a tool catalogue, planned and not run: an executor of its own
        offers the item's tools to the planner, and the task stops at `planned`."""
        from compound.executor.service import Executor

        executor = Executor(settings=self.settings, store=store, client=self.client, price_of=self.price_of,
                            tools=OfferedTools(item.tools))
        try:
            return await self._item(executor, store, item, approve=False)
        finally:
            await executor.stop()

    async def _item(self, executor: Any, store: Any, item: Item, *, approve: bool = True) -> ItemResult:
        task = await store.create_task(prompt=item.request, budget_usd=self.settings.default_budget_usd,
                                       approve=approve)
        await executor.run_task(task.id)
        snap = await store.snapshot(task.id)
        subs = snap["subtasks"]
        descriptions = [s["description"] for s in subs]
        # a streamed plan cut after an invalid answer may keep a dependency on an entry
        # that never came (its subtask was skipped): the plan's shape is what is in it
        deps = [[d for d in s["depends_on"] if d < len(subs)] for s in subs]
        tiers = [int(s["tier_assigned"] or s["tier_hint"]) for s in subs]
        warnings = list(snap.get("warnings") or [])
        kinds = [kind_of(w) for w in warnings]
        fallback = "fallback" in kinds
        fix_kinds: dict[str, int] = {}
        for k in kinds:
            if k not in NOT_FIXES:
                fix_kinds[k] = fix_kinds.get(k, 0) + 1
        rows = await store.ledger_rows(task.id)
        planner_answers = sum(1 for r in rows if r["kind"] == "planner" and r["status"] == "ok")
        strong = self.price_of(self.strong_model)
        # a streamed plan cut to the entries that had started did not validate as a whole
        valid = bool(subs) and not fallback and "streamed plan cut" not in kinds
        result = ItemResult(
            id=item.id, shape=item.shape, request=item.request, status=snap["status"], valid=valid,
            repairs=max(0, planner_answers - 1), fixes=sum(fix_kinds.values()),
            subtasks=[{"description": d, "depends_on": dp, "tier": t}
                      for d, dp, t in zip(descriptions, deps, tiers, strict=True)],
            width=max((len(w) for w in waves(deps)), default=0),
            parallelism=critical_path_length(deps) / len(subs) if valid else None,
            cost_usd=float(snap["total_cost_usd"]),
            strong_tier_cost_usd=sum(_strong_cost(r, strong) for r in rows),
            error=snap.get("error"), warnings=warnings, fallback=fallback,
            missing_join="missing join" in kinds, fix_kinds=fix_kinds,
            replans=len(snap.get("replans") or []), calls=_count(str(r["kind"]) for r in rows),
        )
        if not valid:  # the fallback is not the model's plan: it is scored as no plan
            descriptions, deps, tiers = [], [], []
        if item.expect is not None:
            result.checks = check_expect(item.expect, descriptions, deps, tiers)
        if item.gold is not None and not descriptions:  # no plan: nothing of the gold was found
            result.node_f1 = result.edge_f1 = result.chain_f1 = result.graph_f1 = 0.0
        elif item.gold is not None:
            pred = Graph.from_deps(descriptions, deps)
            # off the event loop: an embedding model is seconds of CPU the other items should not wait on
            matrix = await asyncio.to_thread(self.matcher.matrix, pred.nodes, item.gold.nodes)
            scores = score(pred, item.gold, matrix, self.matcher.threshold)
            result.node_f1, result.edge_f1 = scores.node.f1, scores.edge.f1
            result.chain_f1, result.graph_f1 = scores.chain.f1, scores.graph.f1
        if item.tools:
            await self._score_tools(result, store, task.id, item)
        if self.judge_model and snap.get("result"):
            result.judge = await self._judge(item.request, snap["result"])
        return result

    @staticmethod
    async def _score_tools(result: ItemResult, store: Any, task_id: str, item: Item) -> None:
        """The tools the plan names (each subtask's `tools` and a tool step's `tool`)
        against the gold's; a fallback names none."""
        state = await store.load(task_id)
        subs = state.subtasks if state is not None and result.valid else []
        named = named_tools(subs)
        prf = tool_prf(named, item.gold_tools)
        result.tools = named
        result.tool_precision, result.tool_recall, result.tool_f1 = prf.precision, prf.recall, prf.f1

    async def _judge(self, request: str, answer: str) -> Judgement:
        s = self.settings
        try:
            direct = await self.client.complete(model=self.strong_model,
                                                messages=[{"role": "user", "content": request}],
                                                max_tokens=s.synthesis_max_tokens, timeout_s=s.call_timeout_s)
        except CompoundError as exc:
            return Judgement(verdict="error", direct_cost_usd=0.0, judge_cost_usd=0.0,
                             votes=[f"direct call failed: {exc.message}"])
        assert self.judge_model is not None
        verdicts, cost = [], 0.0
        for first, second in ((answer, direct.text), (direct.text, answer)):
            try:
                out = await self.client.complete(model=self.judge_model,
                                                 messages=judge_messages(request, first, second),
                                                 max_tokens=16, timeout_s=s.call_timeout_s)
            except CompoundError:
                verdicts.append("?")
                continue
            cost += out.cost_usd
            verdicts.append(parse_verdict(out.text))
        verdict, votes = combine(verdicts[0], verdicts[1])
        return Judgement(verdict=verdict, direct_cost_usd=direct.cost_usd, judge_cost_usd=cost, votes=votes)


def _count(keys: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def _strong_cost(row: dict[str, Any], strong: Price) -> float:
    """The same call's tokens at the strongest tier's primary model's prices. A call
    with no token counts (lost, canceled) counts at what it was charged."""
    usage = Usage(row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"])
    if usage == Usage():
        return float(row["cost_usd"])
    return strong.cost(usage)


# summary ------------------------------------------------------------------------------

def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for kind, count in c.items():
            out[kind] = out.get(kind, 0) + count
    return dict(sorted(out.items()))


def fixes_by_kind(results: list[ItemResult]) -> dict[str, int]:
    return _sum_counts([r.fix_kinds for r in results])


def parallelism_by_shape(results: list[ItemResult]) -> dict[str, float | None]:
    """shape -> mean critical path / subtasks over its valid plans (None: no valid plan)."""
    shapes: dict[str, list[float]] = {}
    for r in results:
        values = shapes.setdefault(r.shape or "-", [])
        if r.parallelism is not None:
            values.append(r.parallelism)
    return {shape: _mean(values) for shape, values in sorted(shapes.items())}


def tool_scores(results: list[ItemResult]) -> dict[str, float | None]:
    """Mean tool precision, recall and F1 over the items with a tool catalogue (None:
    the dataset offers no tools)."""
    scored = [r for r in results if r.tool_f1 is not None]
    return {name: _mean([float(getattr(r, name)) for r in scored])
            for name in ("tool_precision", "tool_recall", "tool_f1")}


def summarize(results: list[ItemResult], *, matcher: str, dataset: str, fmt: str,
              settings: Settings, judge_model: str | None) -> dict[str, Any]:
    n = len(results)
    graded = [r for r in results if r.node_f1 is not None]

    def f1(name: str) -> float | None:
        return _mean([float(getattr(r, name)) for r in graded]) if graded else None

    cost = sum(r.cost_usd for r in results)
    strong = sum(r.strong_tier_cost_usd for r in results)
    checked = [r for r in results if r.checks]
    out: dict[str, Any] = {
        "dataset": dataset, "format": fmt, "n": n,
        "valid_rate": sum(r.valid for r in results) / n if n else None,
        "fallback_rate": sum(r.fallback for r in results) / n if n else None,
        "completed_rate": sum(r.status == "completed" for r in results) / n if n else None,
        "statuses": _count(r.status for r in results),
        "replan_rounds": sum(r.replans for r in results),
        "calls_by_kind": _sum_counts([r.calls for r in results]),
        "repairs": sum(r.repairs for r in results),
        "fixes": sum(r.fixes for r in results),
        "fixes_by_kind": fixes_by_kind(results),
        "missing_joins": sum(r.missing_join for r in results),
        "node_f1": f1("node_f1"), "edge_f1": f1("edge_f1"), "chain_f1": f1("chain_f1"), "graph_f1": f1("graph_f1"),
        "matcher": matcher if graded else None,
        **tool_scores(results),
        "parallelism": _mean([r.parallelism for r in results if r.parallelism is not None]),
        "parallelism_by_shape": parallelism_by_shape(results),
        "mean_subtasks": _mean([float(len(r.subtasks)) for r in results if r.valid]),
        "properties_pass_rate": _mean([float(all(r.checks.values())) for r in checked]),
        "checks_pass_rate": _mean([sum(r.checks.values()) / len(r.checks) for r in checked]),
        "cost_usd": cost, "strong_tier_cost_usd": strong,
        "cost_ratio": cost / strong if strong else None,
        "strong_model": settings.tier_models(3)[0],
        "models": {"planner": settings.planner_model, "tier1": settings.tier1_models,
                   "tier2": settings.tier2_models, "tier3": settings.tier3_models,
                   "synthesis_tier": settings.synthesis_tier},
        "judge": None,
    }
    judged = [r.judge for r in results if r.judge is not None]
    if judge_model:
        out["judge"] = {
            "model": judge_model, "n": len(judged),
            "win": sum(j.verdict == "win" for j in judged), "tie": sum(j.verdict == "tie" for j in judged),
            "loss": sum(j.verdict == "loss" for j in judged),
            "error": sum(j.verdict == "error" for j in judged),
            "compound_cost_usd": sum(r.cost_usd for r in results if r.judge is not None),
            "direct_cost_usd": sum(j.direct_cost_usd for j in judged),
            "judge_cost_usd": sum(j.judge_cost_usd for j in judged),
        }
    return out
