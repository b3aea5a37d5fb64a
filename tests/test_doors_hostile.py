"""Hostile bodies at every door: each is answered in the door's own error shape, with
the offending field named, and none reaches the store or answers 5xx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from compound.api.doors.inputs import MAX_DEPTH, BadField, checked_budget, checked_priority, load_json, too_deep

ONE_STEP = "Explain quicksort"  # the simulator plans it as one subtask
PROMPT = "Compare SQLite and PostgreSQL for a small team and recommend one"
DEEP_ARRAYS = b'{"model": "compound", "messages": [{"role": "user", "content": "hi"}], "x": ' \
    + b"[" * 100_000 + b"]" * 100_000 + b"}"
DEEP_OBJECTS = b'{"model": "compound", "messages": [{"role": "user", "content": "hi"}], "x": ' \
    + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"


def chat(content: str = '"hi"', **fields: str) -> bytes:
    """A chat body as raw JSON text (so NaN, 1e400 and lone surrogates go out as written)."""
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return f'{{"model": "compound", "messages": [{{"role": "user", "content": {content}}}]{extra}}}'.encode()


# table tests of the pure checks ------------------------------------------------------


@pytest.mark.parametrize(("text", "path"), [
    ('{"a": 1}', None),
    ("[" * MAX_DEPTH + "]" * MAX_DEPTH, None),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), [0] * MAX_DEPTH),
    ('{"a": [1, 2, ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "]}", ["a", 2, *[0] * (MAX_DEPTH - 2)]),
    ('{"s": "[[[[{{{{", "t": {"u": 1}}', None),  # brackets inside strings do not count
    ('{"k\\"[": ' + '{"k": ' * MAX_DEPTH + "1" + "}" * (MAX_DEPTH + 1), ['k"[', *["k"] * (MAX_DEPTH - 1)]),
])
def test_too_deep_finds_the_path(text: str, path: list[Any] | None) -> None:
    assert too_deep(text) == path


@pytest.mark.parametrize(("raw", "field", "words"), [
    (b"[" * 100_000 + b"]" * 100_000, "0.0.0.0.", "nested deeper than"),
    (b'{"b": NaN}', "body", "NaN is not JSON"),
    (b'{"b": -Infinity}', "body", "-Infinity is not JSON"),
    (b'{"b": [1e400]}', "b.0", "not finite"),
    (b'{"b": "\\ud800"}', "b", "lone surrogate"),
    (b'{"\\udfff": 1}', "body", "a key contains a lone surrogate"),
    (b"\xff\xfe", "body", "not UTF-8"),
    (b"{not json", "body", "not valid JSON"),
    (b'{"n": ' + b"9" * 5000 + b"}", "body", "not valid JSON"),  # Python's int-digits limit
])
def test_load_json_refuses_what_no_door_takes(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(BadField) as exc:
        load_json(raw)
    assert exc.value.field.startswith(field) and words in exc.value.message


@pytest.mark.parametrize(("value", "ok"), [
    (None, None), (0.5, 0.5), (10_000, 10_000.0), (-1, False), (0, False), (1e308, False),
    (float("nan"), False), (float("inf"), False), (10_000.01, False), (True, False), ("1", False),
])
def test_checked_budget(value: object, ok: object) -> None:
    if ok is False:
        with pytest.raises(BadField, match=r"invalid budget_usd: must be a finite number > 0 and at most 10000"):
            checked_budget(value)
    else:
        assert checked_budget(value) == ok


@pytest.mark.parametrize(("value", "ok"), [
    (None, None), (0, 0), (3, 3), (3.0, 3), (99, False), (-1, False), (1.5, False), (True, False), ("1", False),
])
def test_checked_priority(value: object, ok: object) -> None:
    if ok is False:
        with pytest.raises(BadField, match=r"invalid priority: must be 0 \(most urgent\), 1, 2 or 3"):
            checked_priority(value)
    else:
        assert checked_priority(value) == ok


# the OpenAI door -----------------------------------------------------------------------


async def post_chat(served, body: bytes, token: str | None = None,  # type: ignore[no-untyped-def]
                    content_type: str = "application/json") -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        return await http.post("/v1/chat/completions", content=body, headers={
            "Authorization": f"Bearer {token or served.alice}", "Content-Type": content_type})


def openai_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("body", "param", "words"), [
    (chat("null"), "messages.0.content", "needs text"),
    (chat('"   "'), "messages.0.content", "needs text"),
    (chat('"\\ud800"'), "messages.0.content", "lone surrogate"),
    (chat('"a\\u0000b"'), "messages.0.content", "NUL"),
    (chat(json.dumps("x" * 20_001)), "messages.0.content", "at most 20000"),
    (chat("5"), "messages.0.content", ""),
    (chat('[{"type": "text"}]'), "messages.0.content", "only text parts"),
    (chat(max_tokens="-1"), "max_tokens", ""),
    (chat(max_tokens='"lots"'), "max_tokens", ""),
    (chat(budget_usd="NaN"), None, "NaN is not JSON"),
    (chat(budget_usd="Infinity"), None, "Infinity is not JSON"),
    (chat(budget_usd="1e400"), "budget_usd", "not finite"),
    (chat(budget_usd="1e308"), "budget_usd", "10000"),
    (chat(budget_usd="-1"), "budget_usd", ""),
    (chat(priority="99"), "priority", ""),
    (chat(priority="1.5"), "priority", ""),
    (chat(metadata='{"budget_usd": "1e400"}'), "metadata.budget_usd", ""),
    (chat(metadata='{"budget_usd": 5}'), "metadata.budget_usd", ""),
    (chat(stream="5"), "stream", ""),
    (chat(user='"\\udc00"'), "user", "lone surrogate"),
    (DEEP_ARRAYS, "x.0.0.0", "nested deeper than 64 levels"),
    (DEEP_OBJECTS, "x.a.a.a", "nested deeper than 64 levels"),
    (b'{"model": "compound", "messages": "hi"}', "messages", ""),
    (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', "model", ""),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", ""),
    (b'{"model": "compound", "messages": [{"role": "user"}]}', "messages.0.content", "needs text"),
    (b'{"model": "compound", "messages": [1]}', "messages.0", ""),
    (b'{"model": "compound", "messages": [{"role": "system", "content": "a\\u0000"}, '
     b'{"role": "user", "content": "hi"}]}', "messages", "NUL"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b"null", None, "must be a JSON object"),
    (b'"compound"', None, "must be a JSON object"),
    (b"model=compound", None, "not valid JSON"),
    (b"", None, "not valid JSON"),
    (b"\xc3\x28", None, "not UTF-8"),
])
async def test_chat_refuses_hostile_bodies_in_openai_shape(served, body: bytes, param: str | None,  # type: ignore[no-untyped-def]
                                                           words: str) -> None:
    err = openai_error(await post_chat(served, body))
    if param is None:
        assert err["param"] is None
    else:
        assert err["param"] is not None and err["param"].startswith(param), err
    assert words in err["message"]
    store = served.app.state.store
    principal = await store.principal_for_token(served.alice)
    assert (await store.list_tasks(user_id=principal.user_id))[0] == []  # nothing was stored


async def test_chat_refuses_a_form_body(served) -> None:  # type: ignore[no-untyped-def]
    err = openai_error(await post_chat(served, b"model=compound&messages=hi",
                                       content_type="application/x-www-form-urlencoded"))
    assert "not valid JSON" in err["message"]


async def test_huge_max_tokens_is_bounded_before_the_store(served, sim) -> None:  # type: ignore[no-untyped-def]
    r = await post_chat(served, chat(json.dumps(PROMPT), max_tokens=str(10**30), temperature="0.2",
                                     tools='[{"type": "function", "function": {"name": "f"}}]'))
    assert r.status_code == 200, r.text
    task = await served.app.state.store.load(r.headers["x-compound-task-id"])
    cap = served.app.state.settings.synthesis_max_tokens
    assert task is not None and task.answer_max_tokens == cap
    synth = [c for c in sim.calls() if c["kind"] == "synthesizer"]
    assert synth and all(c["body"].get("max_tokens") == cap for c in synth)


async def test_assistant_tool_calls_without_content_are_no_context(served, sim) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "compound", "messages": [
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "user", "content": ONE_STEP}]}
    r = await post_chat(served, json.dumps(body).encode())
    assert r.status_code == 200, r.text
    task = await served.app.state.store.load(r.headers["x-compound-task-id"])
    assert task is not None and task.context == [{"role": "user", "content": "What is the weather?"},
                            {"role": "tool", "content": "sunny"}]
