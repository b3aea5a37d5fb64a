"""A plan read as it streams: the planner's JSON parsed as it arrives (jiter's partial
mode), each subtask entry checked on its own the moment it is complete, and handed out
in index order. An entry that is not valid on its own stops the handing out: it and
every later entry wait for the whole answer's validation (and its repair)."""

from __future__ import annotations

from typing import Any

import jiter

from compound.planner.plan import SubtaskIn
from compound.planner.validate import MAX_DESCRIPTION_CHARS, is_clean_text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def entry_errors(item: Any, index: int, max_subtasks: int) -> list[str]:
    """What makes one plan entry unusable on its own (design.md section 9's rules that
    need no other entry; a dependency on an entry not yet arrived is allowed)."""
    if index >= max_subtasks:
        return [f"the plan has more than {max_subtasks} subtasks"]
    if not isinstance(item, dict):
        return [f"subtask {index} must be an object"]
    errors: list[str] = []
    description = item.get("description")
    if not isinstance(description, str) or not description.strip():
        errors.append(f"subtask {index} needs a non-blank 'description' string")
    elif not is_clean_text(description) or len(description) > MAX_DESCRIPTION_CHARS:
        errors.append(f"subtask {index}'s description is not plain text of at most {MAX_DESCRIPTION_CHARS} characters")
    tier = item.get("tier_hint", 1)
    if not _is_int(tier) or not 1 <= tier <= 3:
        errors.append(f"subtask {index} has tier_hint {tier!r}; it must be 1, 2 or 3")
    depends = item.get("depends_on", [])
    if depends is None:
        depends = []
    if not isinstance(depends, list):
        errors.append(f"subtask {index}'s depends_on must be a list of indices")
        depends = []
    for d in depends:
        if not _is_int(d) or not 0 <= d < max_subtasks:
            errors.append(f"subtask {index} depends on {d!r}, which is not a subtask index")
        elif d == index:
            errors.append(f"subtask {index} depends on itself")
    if item.get("kind") not in (None, "llm") or any(item.get(k) for k in ("tools", "tool", "arguments")):
        # its tools or its step kind are checked against the catalogue with the whole plan
        errors.append(f"subtask {index} acts (tools, a direct call or a step kind): it waits for the whole plan")
    return errors


def entry(item: dict[str, Any]) -> SubtaskIn:
    """An entry that passed `entry_errors`, as validate_plan would make it."""
    deps: list[int] = []
    for d in item.get("depends_on") or []:
        if d not in deps:
            deps.append(d)
    return SubtaskIn(description=item["description"].strip(), tier_hint=item.get("tier_hint", 1), depends_on=deps)


def _key(description: str) -> str:
    return " ".join(description.lower().split())  # as planner/repair.py compares descriptions


def same(a: SubtaskIn, b: SubtaskIn) -> bool:
    """Whether two entries ask for the same work (what a started subtask must keep)."""
    return (a.description, a.tier_hint, list(a.depends_on)) == (b.description, b.tier_hint, list(b.depends_on))


class PlanStream:
    """Feed the answer's text as it arrives; `feed` returns the entries that became
    complete and valid, each once, in index order (`emitted` holds them all).

    An entry is complete when the next one has begun or the list has closed. A new
    attempt of the call (a retry) starts over with `restart()`; its entries must repeat
    the ones already handed out, or the handing out stops (`stopped` says why)."""

    def __init__(self, max_subtasks: int) -> None:
        self.max_subtasks = max_subtasks
        self.emitted: list[SubtaskIn] = []
        self.stopped: str | None = None
        self._text: list[str] = []
        self._checked = 0  # entries of this attempt compared or emitted

    def restart(self) -> None:
        self._text = []
        self._checked = 0

    def feed(self, piece: str) -> list[tuple[int, SubtaskIn]]:
        self._text.append(piece)
        if self.stopped is not None:
            return []
        text = "".join(self._text)
        self._text = [text]
        start = text.find("{")
        if start < 0:
            return []
        try:
            data = jiter.from_json(text[start:].encode("utf-8"), partial_mode="trailing-strings")
        except ValueError:
            return []  # not JSON so far (prose around it, a fence): the whole answer decides
        if not isinstance(data, dict) or not isinstance(data.get("subtasks"), list):
            return []
        items: list[Any] = data["subtasks"]
        keys = list(data)
        closed = keys.index("subtasks") < len(keys) - 1  # a key after the list: it has closed
        complete = len(items) if closed else len(items) - 1
        out: list[tuple[int, SubtaskIn]] = []
        while self._checked < complete:
            k = self._checked
            errors = entry_errors(items[k], k, self.max_subtasks)
            if errors:
                self.stopped = "; ".join(errors)
                break
            got = entry(items[k])
            if k >= len(self.emitted) and _key(got.description) in {_key(e.description) for e in self.emitted}:
                # repair merges a repeated subtask into the first and renumbers the rest
                self.stopped = f"subtask {k} repeats an earlier subtask"
                break
            if k < len(self.emitted):
                if not same(got, self.emitted[k]):
                    self.stopped = f"the planner's answer changed subtask {k} after it had started"
                    break
            else:
                self.emitted.append(got)
                out.append((k, got))
            self._checked += 1
        return out
