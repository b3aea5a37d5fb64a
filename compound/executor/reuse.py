"""What a re-run may reuse: a subtask whose description, tier, models and inputs are
unchanged from a completed subtask of the earlier task. Inputs are the dependencies'
results, so a subtask is reused only when every dependency of it is reused too; a
change anywhere runs that subtask and everything downstream of it again. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from compound.planner.plan import topological_order
from compound.store.models import SubtaskStatus
from compound.store.values import SubState


def content_keys(subs: Sequence[SubState]) -> list[str]:
    """Each subtask's key: a digest of what it is asked (description, tier, models,
    kind, tools, a direct call's tool and arguments) and,
    recursively, of the keys of its dependencies (with whether each is required)."""
    keys = [""] * len(subs)
    for i in topological_order([s.depends_on for s in subs]):
        s = subs[i]
        body = json.dumps([s.description, s.tier_assigned, list(s.models), s.kind, sorted(s.tools), s.tool,
                           s.arguments, [[keys[d], d in s.optional] for d in s.depends_on]], sort_keys=True)
        keys[i] = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return keys


def reusable(new: Sequence[SubState], old: Sequence[SubState]) -> dict[int, SubState]:
    """new index -> the earlier completed subtask whose result it reuses."""
    done: dict[str, SubState] = {}
    for key, s in zip(content_keys(old), old, strict=True):
        if s.status == SubtaskStatus.completed and s.result is not None:
            done.setdefault(key, s)
    out: dict[int, SubState] = {}
    keys = content_keys(new)
    for i in topological_order([s.depends_on for s in new]):
        found = done.get(keys[i])
        if found is not None and all(d in out for d in new[i].depends_on):
            out[i] = found
    return out
