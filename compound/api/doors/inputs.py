"""What the doors take from a request, checked before anything reaches the engine or the
store: JSON read with a depth limit, finite numbers, valid Unicode, bounded budgets and
priorities. A value a door cannot take is a BadField naming it; each door answers it in
its own protocol's shape (OpenAI's `param`, MCP's tool error, A2A's invalid params)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from compound.core.errors import UserInputError

MAX_DEPTH = 64  # arrays and objects nested deeper than any real request of any door
BUDGET_MAX_USD = 10_000.0  # as POST /v1/tasks (api/schemas.py TaskCreate)
PRIORITIES = (0, 1, 2, 3)


class BadField(UserInputError):
    """A request value a door cannot take; `field` names it (a dotted path in the door's
    own terms: `messages.2.content`, `metadata.budget_usd`)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"invalid {field}: {problem}")


def path_of(parts: list[str | int] | tuple[str | int, ...], limit: int = 8) -> str:
    """A dotted path (`messages.0.content`), its middle elided past `limit` parts."""
    names = [str(p) for p in parts]
    if len(names) > limit:
        names = [*names[: limit - 2], "…", *names[-2:]]
    return ".".join(names) or "body"


# a JSON string (escapes included) or one structural character
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]', re.DOTALL)


def too_deep(text: str, limit: int = MAX_DEPTH) -> list[str | int] | None:
    """The path of the first array or object nested deeper than `limit` in JSON text
    (read without recursion, so it is safe on any depth); None when none is."""
    path: list[str | int] = []
    kinds: list[str] = []
    last_string: str | None = None
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok in ("[", "{"):
            if len(kinds) >= limit:
                return path
            kinds.append(tok)
            path.append(0 if tok == "[" else "")
        elif tok in ("]", "}"):
            if kinds:
                kinds.pop()
                path.pop()
        elif tok == ":":
            if kinds and kinds[-1] == "{" and last_string is not None:
                try:
                    path[-1] = json.loads(last_string)
                except ValueError:
                    path[-1] = last_string[1:-1]
        elif tok == ",":
            if kinds and kinds[-1] == "[":
                path[-1] = int(path[-1]) + 1
        else:
            last_string = tok
    return None


def load_json(raw: bytes | str, *, finite: bool = True) -> Any:
    """A request body as JSON a door can take: not nested deeper than MAX_DEPTH, strings
    valid Unicode (no lone surrogate such as the escape \\ud800) and, when `finite`,
    numbers finite (no NaN, Infinity or 1e400). Anything else is a BadField naming
    where ("body" when it is not JSON at all)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise BadField("body", "not valid JSON (not UTF-8 text)") from None
    deep = too_deep(text)
    if deep is not None:
        raise BadField(path_of(deep), f"nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadField("body", "not valid JSON") from None
    check_json(data, finite=finite)
    return data


def check_json(data: Any, where: tuple[str | int, ...] = (), *, finite: bool = True) -> None:
    """Every string (keys too) valid Unicode and (when `finite`) every number finite,
    else BadField."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [(where, data)]
    while stack:
        path, value = stack.pop()
        if finite and isinstance(value, float) and not math.isfinite(value):
            raise BadField(path_of(path), "a number too large or not finite; numbers must be finite")
        if isinstance(value, str) and not valid_unicode(value):
            raise BadField(path_of(path), "contains a lone surrogate (such as \\ud800), which is not text")
        if isinstance(value, dict):
            for k, v in value.items():
                if not valid_unicode(k):
                    raise BadField(path_of(path), "a key contains a lone surrogate, which is not text")
                stack.append(((*path, k), v))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in enumerate(value))


def valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked_budget(value: object, field: str = "budget_usd") -> float | None:
    """A budget in USD: a finite number > 0 and at most BUDGET_MAX_USD (None: the default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= BUDGET_MAX_USD:
        raise BadField(field, f"must be a finite number > 0 and at most {BUDGET_MAX_USD:g} (got {shown(value)})")
    return float(value)


def checked_priority(value: object, field: str = "priority") -> int | None:
    """A priority: 0 (most urgent), 1, 2 or 3 (None: 2)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in PRIORITIES:
        raise BadField(field, f"must be 0 (most urgent), 1, 2 or 3 (got {shown(value)})")
    return int(value)


def checked_text(value: str, field: str, *, limit: int) -> str:
    """Text a task can be given: not blank, at most `limit` characters, no NUL (PostgreSQL
    refuses it) and valid Unicode."""
    if not value.strip():
        raise BadField(field, "must not be empty")
    if len(value) > limit:
        raise BadField(field, f"{len(value)} characters; at most {limit} are accepted")
    if "\x00" in value:
        raise BadField(field, "contains a NUL character; send plain text")
    if not valid_unicode(value):
        raise BadField(field, "contains a lone surrogate (such as \\ud800), which is not text")
    return value


def shown(value: object) -> str:
    """A value as an error message quotes it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
