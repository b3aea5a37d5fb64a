"""Queue mode's streamed answers, over NOTIFY (store/pg_notify.py's ANSWER_WANT and
ANSWER): an API process whose door has a client listening to a task says so; the
worker running the task streams its synthesis and NOTIFYs each piece; every API
process hears them and hands them to the listeners it has (executor/answers.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from compound.core.logging import get_logger
from compound.executor.answers import ForwardedAnswers, RemoteAnswers

log = get_logger("compound.worker.answers")

# Characters of text per NOTIFY: a payload holds at most 8,000 bytes, and a character
# may take six in JSON (a control character's escape).
CHUNK = 1000


def payloads(message: tuple[Any, ...]) -> list[str]:
    """The NOTIFY payloads of one relayed piece ("ans", op, task_id, attempt, text): a
    long delta is cut in several, which join back in order."""
    _, op, task_id, attempt, text = message
    parts = [text[i: i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    return [json.dumps({"op": op, "t": task_id, "a": attempt, "x": part}, ensure_ascii=False) for part in parts]


def relay_to(answers: RemoteAnswers) -> Callable[[str], None]:
    """The ANSWER handler of an API process."""

    def heard(payload: str) -> None:
        try:
            piece = json.loads(payload)
            answers.relay(str(piece["op"]), str(piece["t"]), int(piece["a"]), str(piece["x"]))
        except (ValueError, KeyError, TypeError):
            log.warning("an answer piece could not be read", payload=payload[:200])

    return heard


def wants_of(answers: ForwardedAnswers) -> Callable[[str], None]:
    """The ANSWER_WANT handler of a worker: "+<task id>" or "-<task id>"."""

    def heard(payload: str) -> None:
        if len(payload) > 1 and payload[0] in "+-":
            answers.want(payload[1:], payload[0] == "+")

    return heard


def want_payload(message: tuple[Any, ...]) -> str:
    """("listen" | "unlisten", task_id) as an ANSWER_WANT payload."""
    kind, task_id = message
    return ("+" if kind == "listen" else "-") + str(task_id)
