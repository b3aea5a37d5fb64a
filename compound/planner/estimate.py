"""The worst-case cost of running a plan, before anything runs."""

from __future__ import annotations

from collections.abc import Callable

from compound.core.money import worst_case_usd
from compound.core.settings import Settings
from compound.llm.base import Price
from compound.planner.plan import PlanIn
from compound.planner.router import route
from compound.prompts import render


def max_tokens_for(model: str, settings: Settings, default: int) -> int:
    return settings.model_config_for(model).max_tokens or default


def estimate_cost(plan: PlanIn, settings: Settings, price_of: Callable[[str], Price],
                  *, request: str = "") -> float:
    """Sum of every call's worst case on its primary model: each dependency result at
    the longest a model may write (max_tokens x 4 bytes), plus the synthesis call."""
    total = 0.0
    results = []
    for r in route(plan, settings):
        model = r.models[0]
        mt = max_tokens_for(model, settings, settings.max_tokens)
        sub = plan.subtasks[r.index]
        deps = [(d, "x" * (settings.max_tokens * 4)) for d in sub.needs]
        msgs = render("subtask", request=request, description=sub.description, dependencies=deps)
        total += worst_case_usd(msgs, mt, price_of(model))
        results.append((r.index, sub.description, "x" * (mt * 4)))
    synth_model = settings.tier_models(settings.synthesis_tier)[0]
    msgs = render("synthesize", request=request, results=results)
    total += worst_case_usd(msgs, max_tokens_for(synth_model, settings, settings.synthesis_max_tokens),
                            price_of(synth_model))
    return total
