"""Record and replay model answers: LLMClient wrappers keyed by the model and a hash of
the messages, so an eval runs offline and deterministically from a recording."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from compound.core.errors import ProviderError, UserInputError
from compound.llm.base import Completion, Delta, LLMClient, Message, StreamEvent, Usage


def call_key(model: str, messages: list[Message]) -> str:
    body = json.dumps([model, [[m["role"], m["content"]] for m in messages]], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _row(key: str, out: Completion) -> dict[str, Any]:
    u = out.usage
    return {"key": key, "model": out.model, "text": out.text, "cost_usd": out.cost_usd,
            "finish_reason": out.finish_reason,
            "usage": [u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens]}


def _error_row(key: str, model: str, exc: ProviderError) -> dict[str, Any]:
    return {"key": key, "model": model, "error": {"message": exc.message, "status": exc.status,
                                                  "transient": exc.transient, "retry_after_s": exc.retry_after_s}}


def structured_output_of(client: Any) -> dict[str, str]:
    """model -> the structured-output form its endpoint accepted, from a client that
    records it (the registry, a recording or a replay); {} from one that does not."""
    forms = getattr(client, "structured_output", None)
    return dict(forms()) if callable(forms) else {}


class RecordingClient:
    """Passes every call to `inner` and appends its answer, or the provider error it
    ended with, to a JSON-lines file, after a first line describing the run (`header`:
    the configured models); `finish()` adds a last line with the structured-output form
    each model's endpoint accepted."""

    def __init__(self, inner: LLMClient, path: Path, *, header: dict[str, Any]) -> None:
        self.inner = inner
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"header": header}, ensure_ascii=False) + "\n", encoding="utf-8")

    async def warm(self) -> None:
        await self.inner.warm()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,
                       json_schema: dict[str, Any] | None = None, timeout_s: float | None = None) -> Completion:
        try:
            out = await self.inner.complete(model=model, messages=messages, max_tokens=max_tokens,
                                            json_schema=json_schema, timeout_s=timeout_s)
        except ProviderError as exc:
            self._write(_error_row(call_key(model, messages), model, exc))
            raise
        self._record(model, messages, out)
        return out

    async def stream(self, *, model: str, messages: list[Message], max_tokens: int,
                     json_schema: dict[str, Any] | None = None,
                     timeout_s: float | None = None) -> AsyncIterator[StreamEvent]:
        """The inner stream passed on; its whole answer (or its error) recorded as
        `complete()`'s is."""
        try:
            async for event in self.inner.stream(model=model, messages=messages, max_tokens=max_tokens,
                                                 json_schema=json_schema, timeout_s=timeout_s):
                if isinstance(event, Completion):
                    self._record(model, messages, event)
                yield event
        except ProviderError as exc:
            self._write(_error_row(call_key(model, messages), model, exc))
            raise

    def _record(self, model: str, messages: list[Message], out: Completion) -> None:
        self._write(_row(call_key(model, messages), out))

    def _write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    def structured_output(self) -> dict[str, str]:
        return structured_output_of(self.inner)

    def finish(self) -> None:
        forms = self.structured_output()
        if forms:
            with self._lock, self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"structured_output": forms}) + "\n")


class ReplayClient:
    """Answers from a recording. The same call recorded n times answers its n answers
    in order, then the last again; a recorded provider error is raised again, with its
    message, status and transience. A call never recorded is a permanent ProviderError
    naming the model (the run is not the one recorded)."""

    def __init__(self, path: Path) -> None:
        self.answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.header: dict[str, Any] = {}
        self.forms: dict[str, str] = {}
        self.misses = 0
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UserInputError(f"cannot read the recording {path}: {exc.strerror or exc}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "header" in row:
                    self.header = dict(row["header"])
                elif "structured_output" in row:
                    self.forms = {str(k): str(v) for k, v in row["structured_output"].items()}
                else:
                    self.answers[str(row["key"])].append(row)
            except (ValueError, KeyError, TypeError):
                raise UserInputError(f"{path} line {n} is not a recorded answer") from None
        self._used: dict[str, int] = defaultdict(int)

    def structured_output(self) -> dict[str, str]:
        """The forms the recorded run's endpoints accepted."""
        return dict(self.forms)

    async def warm(self) -> None:
        """Nothing to warm: the answers are in memory."""

    async def aclose(self) -> None:
        """Nothing held."""

    async def complete(self, *, model: str, messages: list[Message], max_tokens: int,  # noqa: ARG002
                       json_schema: dict[str, Any] | None = None,  # noqa: ARG002
                       timeout_s: float | None = None) -> Completion:  # noqa: ARG002
        key = call_key(model, messages)
        rows = self.answers.get(key)
        if not rows:
            self.misses += 1
            raise ProviderError(f"{model}: no recorded answer for this call (key {key[:12]}); "
                                "the recording was made with other models, prompts or requests",
                                status=404, model=model, transient=False)
        row = rows[min(self._used[key], len(rows) - 1)]
        self._used[key] += 1
        if "error" in row:
            e = row["error"]
            raise ProviderError(str(e["message"]), status=e.get("status"), model=str(row["model"]),
                                retry_after_s=e.get("retry_after_s"), transient=bool(e.get("transient")))
        u = row["usage"]
        return Completion(text=row["text"], model=row["model"], usage=Usage(*u), cost_usd=float(row["cost_usd"]),
                          finish_reason=row.get("finish_reason"))

    async def stream(self, *, model: str, messages: list[Message], max_tokens: int,
                     json_schema: dict[str, Any] | None = None,
                     timeout_s: float | None = None) -> AsyncIterator[StreamEvent]:
        """The recorded answer in one piece, as a server that does not stream answers."""
        out = await self.complete(model=model, messages=messages, max_tokens=max_tokens, json_schema=json_schema,
                                  timeout_s=timeout_s)
        yield Delta(out.text)
        yield out
