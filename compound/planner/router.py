"""The router: each subtask's tier becomes an ordered model list (primary first)."""

from __future__ import annotations

from dataclasses import dataclass

from compound.core.settings import Settings
from compound.planner.plan import PlanIn


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    tier_hint: int
    tier_assigned: int
    models: list[str]


def route(plan: PlanIn, settings: Settings) -> list[Route]:
    """tier_assigned = the planner's hint (clamped to 1..3); models from the tier's list."""
    routes = []
    for i, sub in enumerate(plan.subtasks):
        tier = min(3, max(1, int(sub.tier_hint)))
        routes.append(Route(i, sub.tier_hint, tier, list(settings.tier_models(tier))))
    return routes
