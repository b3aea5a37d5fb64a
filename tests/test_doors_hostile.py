"""Hostile bodies at every door: each is answered in the door's own error shape, with
the offending field named, and none reaches the store or answers 5xx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from compound.api.doors.inputs import MAX_DEPTH, BadField, checked_budget, checked_priority, load_json, too_deep
from compound.core.settings import Settings
from compound.simulator import Simulator
from tests.fixtures.served import Served

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
    (b'{"b": NaN}', "b", "not finite"),
    (b'{"b": {"c": -Infinity}}', "b.c", "not finite"),
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


async def post_chat(served: Served, body: bytes, token: str | None = None,
                    content_type: str = "application/json") -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        return await http.post("/v1/chat/completions", content=body, headers={
            "Authorization": f"Bearer {token or served.alice}", "Content-Type": content_type})


def openai_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    got: dict[str, Any] = body["error"]
    return got


@pytest.mark.parametrize(("body", "param", "words"), [
    (chat("null"), "messages.0.content", "needs text"),
    (chat('"   "'), "messages.0.content", "needs text"),
    (chat('"\\ud800"'), "messages.0.content", "lone surrogate"),
    (chat('"a\\u0000b"'), "messages.0.content", "NUL"),
    (chat(json.dumps("x" * 20_001)), "messages.0.content", "at most 20000"),
    (chat("5"), "messages.0.content", ""),
    (chat('[{"type": "text"}]'), "messages.0.content", "a text part needs its text"),
    (chat(max_tokens="-1"), "max_tokens", ""),
    (chat(max_tokens='"lots"'), "max_tokens", ""),
    (chat(budget_usd="NaN"), "budget_usd", "not finite"),
    (chat(budget_usd="Infinity"), "budget_usd", "not finite"),
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
async def test_chat_refuses_hostile_bodies_in_openai_shape(served: Served, body: bytes, param: str | None,
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


async def test_chat_refuses_a_form_body(served: Served) -> None:
    err = openai_error(await post_chat(served, b"model=compound&messages=hi",
                                       content_type="application/x-www-form-urlencoded"))
    assert "not valid JSON" in err["message"]


async def test_errors_from_outside_the_chat_door_are_in_openai_shape(served: Served) -> None:
    limit = served.app.state.settings.max_body_bytes
    too_big = openai_error(await post_chat(served, chat(json.dumps("x" * limit))), 413)
    assert too_big["code"] == "payload_too_large" and str(limit) in too_big["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is met as it streams
        yield b'{"model": "compound", "messages": [{"role": "user", "content": "'
        for _ in range(limit // 65_536 + 2):
            yield b"x" * 65_536
        yield b'"}]}'

    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        streamed = await http.post("/v1/chat/completions", content=chunks(),
                                   headers={"Authorization": f"Bearer {served.alice}"})
        assert openai_error(streamed, 413)["code"] == "payload_too_large"
        wrong_method = await http.get("/v1/chat/completions", headers={"Authorization": f"Bearer {served.alice}"})
    assert openai_error(wrong_method, 405)["param"] is None


async def test_huge_max_tokens_is_bounded_before_the_store(served: Served, sim: Simulator) -> None:
    r = await post_chat(served, chat(json.dumps(PROMPT), max_tokens=str(10**30), temperature="0.2",
                                     tools='[{"type": "function", "function": {"name": "f"}}]'))
    assert r.status_code == 200, r.text
    task = await served.app.state.store.load(r.headers["x-compound-task-id"])
    cap = served.app.state.settings.synthesis_max_tokens
    assert task is not None and task.answer_max_tokens == cap
    synth = [c for c in sim.calls() if c["kind"] == "synthesizer"]
    assert synth and all(c["body"].get("max_tokens") == cap for c in synth)


async def test_assistant_tool_calls_without_content_are_no_context(served: Served, sim: Simulator) -> None:
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


# the MCP door --------------------------------------------------------------------------


def rpc(method: str, params: Any = None, rid: str = "1") -> bytes:
    """A JSON-RPC request as raw text (`rid` and `params` written as given)."""
    tail = "" if params is None else f', "params": {params}'
    return f'{{"jsonrpc": "2.0", "id": {rid}, "method": "{method}"{tail}}}'.encode()


def submit(args: str) -> bytes:
    return rpc("tools/call", f'{{"name": "submit_task", "arguments": {args}}}')


async def post_mcp(served: Served, body: bytes, token: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        return await http.post("/mcp", content=body, headers={
            "Authorization": f"Bearer {token or served.alice}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"})


def mcp_message(r: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer of an /mcp POST (a JSON body, or the SSE stream's message)."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        streamed: dict[str, Any] = json.loads(data[-1])
        return streamed
    got: dict[str, Any] = r.json()
    return got


def tool_error(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    result = mcp_message(r)["result"]
    assert result["isError"] is True
    text: str = result["content"][0]["text"]
    prefix = "Error executing tool submit_task: "
    assert text.startswith(prefix), text
    return text[len(prefix):]


BUDGET_ERROR = "invalid_request: invalid budget_usd: must be a finite number > 0 and at most 10000"


@pytest.mark.parametrize(("args", "words"), [
    ('{"prompt": "hi", "budget_usd": -1}', BUDGET_ERROR + " (got -1"),
    ('{"prompt": "hi", "budget_usd": 1e308}', BUDGET_ERROR + " (got 1e+308)"),
    ('{"prompt": "hi", "budget_usd": NaN}', BUDGET_ERROR + " (got nan)"),
    ('{"prompt": "hi", "budget_usd": Infinity}', BUDGET_ERROR + " (got inf)"),
    ('{"prompt": "hi", "budget_usd": 1e400}', BUDGET_ERROR + " (got inf)"),
    ('{"prompt": "hi", "priority": 99}', "invalid_request: invalid priority: must be 0 (most urgent), 1, 2 or 3"),
    ('{"prompt": "   "}', "invalid_request: invalid prompt: must not be empty"),
    ('{"prompt": "a\\u0000b"}', "invalid_request: invalid prompt: contains a NUL"),
    ('{"prompt": ' + json.dumps("x" * 20_001) + "}", "invalid_request: invalid prompt: 20001 characters"),
    ('{"prompt": "hi", "plan": {"subtasks": [{"description": "a", "tier_hint": 1e30}]}}', "invalid_request:"),
    ('{"prompt": 5}', "1 validation error"),
    ('{}', "1 validation error"),
])
async def test_mcp_submit_says_what_was_wrong(served: Served, args: str, words: str) -> None:
    assert tool_error(await post_mcp(served, submit(args))).startswith(words)
    store = served.app.state.store
    principal = await store.principal_for_token(served.alice)
    assert (await store.list_tasks(user_id=principal.user_id))[0] == []


@pytest.mark.parametrize(("body", "code", "words"), [
    (rpc("tools/list", rid="1e400"), -32600, "invalid id: a request's id must be a string or an integer (got inf)"),
    (rpc("tools/list", rid='{"a": 1}'), -32600, "invalid id"),
    (rpc("tools/list", rid="[1]"), -32600, "invalid id"),
    (rpc("tools/list", rid="null"), -32600, "invalid id"),
    (rpc("tools/list", rid="true"), -32600, "invalid id"),
    (rpc("tools/list", rid="1.5"), -32600, "invalid id"),
    (rpc("tools/list", rid='"\\ud800"'), -32600, "invalid id"),
    (submit('{"prompt": "\\ud800"}'), -32602, "invalid params.arguments.prompt: contains a lone surrogate"),
    (submit('{"prompt": "hi", "plan": {"subtasks": [{"description": "\\udc00"}]}}'), -32602,
     "invalid params.arguments.plan.subtasks.0.description: contains a lone surrogate"),
    (rpc("tools/call", '{"name": "get_task", "arguments": {"task_id": "\\ud800"}}'), -32602,
     "invalid params.arguments.task_id"),
    (rpc("tools/call", '{"name": "list_tasks", "arguments": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"),
     -32602, "invalid params.arguments.x.0.0"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "extra": ' + b'{"a": ' * 100_000 + b"1"
     + b"}" * 100_001, -32600, "invalid extra.a.a"),
])
async def test_mcp_answers_requests_it_cannot_take_with_a_jsonrpc_error(served: Served, body: bytes, code: int,
                                                                        words: str) -> None:
    r = await post_mcp(served, body)
    assert r.status_code == 400, r.text
    answer = r.json()
    assert answer["jsonrpc"] == "2.0" and answer["id"] is None
    assert answer["error"]["code"] == code and answer["error"]["message"].startswith(words), answer


@pytest.mark.parametrize(("tool", "args", "words"), [
    ("get_task", '{"task_id": "t_\\u0000"}', "not_found: no task with id"),
    ("get_task", '{"task_id": ' + json.dumps("t" * 5000) + "}", "not_found: no task with id"),
    ("cancel_task", '{"task_id": "t_\\u0000"}', "not_found: no task with id"),
    ("list_tasks", '{"cursor": "\\u0000"}', "invalid_request: invalid cursor"),
    ("list_tasks", '{"limit": 1e400}', "1 validation error"),
])
async def test_mcp_reading_tools_refuse_ids_no_task_has(served: Served, tool: str, args: str, words: str) -> None:
    r = await post_mcp(served, rpc("tools/call", f'{{"name": "{tool}", "arguments": {args}}}'))
    assert r.status_code == 200, r.text
    result = mcp_message(r)["result"]
    assert result["isError"] is True
    assert result["content"][0]["text"].removeprefix(f"Error executing tool {tool}: ").startswith(words), result


async def test_mcp_wait_with_a_submit_only_token_is_refused_before_a_task_exists(served: Served) -> None:
    from compound.store.users import create_token

    store = served.app.state.store
    _, token = create_token(store.engine, "dave", ["submit"])
    r = await post_mcp(served, submit('{"prompt": "Explain quicksort", "wait": true}'), token=token)
    assert tool_error(r).startswith("forbidden: this token lacks the 'read' scope")
    principal = await store.principal_for_token(token)
    assert (await store.list_tasks(user_id=principal.user_id))[0] == []
    # without wait the same token submits, and the answer holds the task's id
    done = mcp_message(await post_mcp(served, submit('{"prompt": "Explain quicksort"}'), token=token))["result"]
    assert done["isError"] is False and done["structuredContent"]["id"].startswith("t_")


# the A2A door --------------------------------------------------------------------------


async def post_a2a(served: Served, body: bytes, token: str | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        version = {} if b'"method": "message/' in body else {"A2A-Version": "1.0"}
        r = await http.post("/a2a", content=body, headers={
            "Authorization": f"Bearer {token or served.alice}", "Content-Type": "application/json", **version})
    assert r.status_code < 500, r.text
    got: dict[str, Any] = r.json()
    return got


def send(meta: str = "{}", text: str = '"Explain quicksort"', more: str = "", method: str = "SendMessage") -> bytes:
    part = f'{{"kind": "text", "text": {text}}}' if method.startswith("message/") else f'{{"text": {text}}}'
    role = '"user"' if method.startswith("message/") else '"ROLE_USER"'
    return rpc(method, f'{{"message": {{"messageId": "m1", "role": {role}, "parts": [{part}], '
                       f'"metadata": {meta}{more}}}, "configuration": {{"returnImmediately": true}}}}', rid="7")


@pytest.mark.parametrize(("body", "code", "words"), [
    (send('{"budget_usd": 1e400}'), -32602, "invalid params.message.metadata.budget_usd: a number too large"),
    (send('{"budget_usd": NaN}'), -32602, "invalid params.message.metadata.budget_usd: a number too large"),
    (send('{"budget_usd": -Infinity}'), -32602, "invalid params.message.metadata.budget_usd"),
    (send('{"budget_usd": -1}'), -32602, "invalid metadata.budget_usd: must be a finite number > 0"),
    (send('{"budget_usd": 1e308}'), -32602, "invalid metadata.budget_usd: must be a finite number > 0"),
    (send('{"budget_usd": true}'), -32602, "invalid metadata.budget_usd"),
    (send('{"priority": 99}'), -32602, "invalid metadata.priority: must be 0 (most urgent), 1, 2 or 3"),
    (send('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"), -32602, "invalid params.message.metadata.x.0.0"),
    (send('{"x": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}"), -32602,
     "invalid params.message.metadata.x.a.a"),
    (send(text='"\\ud800"'), -32602, "invalid params.message.parts.0.text: contains a lone surrogate"),
    (send(text='"a\\u0000b"'), -32602, "invalid message.parts: contains a NUL"),
    (send(text=json.dumps("x" * 20_001)), -32602, "invalid message.parts: 20001 characters"),
    (send('{"budget_usd": 1e400}', method="message/send"), -32602, "invalid params.message.metadata.budget_usd"),
    (send('{"priority": 99}', method="message/send"), -32602, "invalid metadata.priority"),
    (b'{"jsonrpc": "2.0", "id": 7, "method": "GetTask", "params": {"id": "t"}, "x": ' + b"[" * 100_000
     + b"]" * 100_000 + b"}", -32600, "invalid x.0.0"),
    (rpc("GetTask", '{"id": "t_\\u0000"}'), -32001, ""),
    (rpc("GetTask", '{"id": 1e400}'), -32602, "invalid params.id"),
])
async def test_a2a_refuses_hostile_params_naming_the_field(served: Served, body: bytes, code: int, words: str) -> None:
    answer = await post_a2a(served, body)
    assert answer["jsonrpc"] == "2.0" and "result" not in answer, answer
    assert answer["error"]["code"] == code and answer["error"]["message"].startswith(words), answer
    store = served.app.state.store
    principal = await store.principal_for_token(served.alice)
    assert (await store.list_tasks(user_id=principal.user_id))[0] == []


async def test_a2a_a_03_method_sent_as_10_is_an_invalid_request(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        r = await http.post("/a2a", content=send(method="message/send"), headers={
            "Authorization": f"Bearer {served.alice}", "A2A-Version": "1.0"})
    err = r.json()["error"]
    assert err["code"] == -32600 and "an A2A 0.3 name" in err["message"] and "SendMessage" in err["message"]


@pytest.mark.parametrize("method", ["SendMessage", "message/send"])
async def test_a2a_message_naming_another_users_task_is_task_not_found(served: Served, method: str) -> None:
    mine = (await post_a2a(served, send(), token=served.bob))["result"]
    theirs = (mine.get("task") or mine)["id"]
    for field in ("taskId", "contextId"):
        for named in (theirs, "t_0000000000000000"):
            answer = await post_a2a(served, send(more=f', "{field}": "{named}"', method=method))
            assert answer["error"]["code"] == -32001, answer
    store = served.app.state.store
    alice = await store.principal_for_token(served.alice)
    assert (await store.list_tasks(user_id=alice.user_id))[0] == []
    # the owner may name it: compound keeps no conversations, so a new task starts
    again = (await post_a2a(served, send(more=f', "contextId": "{theirs}"', method=method), token=served.bob))
    assert (again["result"].get("task") or again["result"])["id"] != theirs


# every door, every field, every hostile value: never a server error ------------------

HOSTILE = ["null", "true", "-1", "0", "1.5", "1e308", "1e400", "NaN", "-Infinity", str(10**30), "-" + str(10**30),
           '""', '"\\ud800"', '"a\\u0000b"', json.dumps("x" * 30_000), "[]", "{}", '[{"a": null}]',
           "[" * 200 + "]" * 200, '{"a": ' * 200 + "1" + "}" * 200, '"t_0000000000000000"']
MARK = "\u2603HOSTILE\u2603"


def with_value(base: dict[str, Any], path: tuple[str | int, ...], raw: str) -> bytes:
    """`base` as JSON text with the value at `path` replaced by the raw JSON text `raw`."""
    body = json.loads(json.dumps(base))
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = MARK
    return json.dumps(body).replace(json.dumps(MARK), raw).encode()


def leaves(base: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path in `base` (each container and each value)."""
    found = [path] if path else []
    if isinstance(base, dict):
        for k, v in base.items():
            found += leaves(v, (*path, k))
    elif isinstance(base, list):
        for i, v in enumerate(base):
            found += leaves(v, (*path, i))
    return found


TINY = 0.000001  # a budget that cannot pay for planning: an accepted body ends before any call
CHAT = {"model": "compound", "messages": [{"role": "system", "content": "ctx"}, {"role": "user", "content": "hi"}],
        "max_tokens": 5, "stream": False, "metadata": {"priority": "1"}, "budget_usd": TINY, "priority": 1}
MCP_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "submit_task", "arguments": {
    "prompt": "hi", "budget_usd": TINY, "priority": 1, "approve": True, "wait": False}}}
MCP_OTHERS = [
    {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_task", "arguments": {"task_id": "t_1"}}},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_tasks", "arguments": {
        "limit": 5, "status": "completed", "cursor": "c"}}},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "validate_plan", "arguments": {
        "plan": {"reasoning": "r", "subtasks": [{"description": "a", "tier_hint": 1, "depends_on": []}]}}}}]
A2A_SEND = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {
    "message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}], "taskId": "",
                "metadata": {"budget_usd": TINY, "priority": 1}},
    "configuration": {"returnImmediately": True}}}


async def test_no_hostile_body_gets_a_server_error_at_any_door(served: Served) -> None:
    await sweep(served)


@pytest.mark.postgres
async def test_no_hostile_body_gets_a_server_error_on_postgresql(pg_url: str, sim_settings: Settings, sim: Simulator) -> None:
    """The same on PostgreSQL, which refuses a NUL in text and holds 32-bit INTEGERs."""
    from compound.api.app import create_app
    from compound.llm import build_client
    from tests.fixtures.served import serving

    settings = sim_settings.model_copy(update={"database_url": pg_url, "rate_limit_per_minute": 100_000})
    async with serving(create_app(settings, client=build_client(settings))) as served:
        await sweep(served)
        r = await post_chat(served, chat(json.dumps(ONE_STEP), max_tokens=str(10**30)))
        assert r.status_code == 200, r.text
        task = await served.app.state.store.load(r.headers["x-compound-task-id"])
        assert task is not None and task.answer_max_tokens == settings.synthesis_max_tokens


async def sweep(served: Served) -> None:
    """Every hostile value in every field of each door's request, as JSON and as text:
    never a 5xx, never JSON-RPC's internal error, the chat door always in OpenAI's shape."""
    seen: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=served.url, timeout=120,
                                 headers={"Authorization": f"Bearer {served.alice}"}) as http:
        mcp_headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
        for door, base, url, headers in (
                ("chat", CHAT, "/v1/chat/completions", {}),
                ("mcp", MCP_CALL, "/mcp", mcp_headers),
                *(("mcp", other, "/mcp", mcp_headers) for other in MCP_OTHERS),
                ("a2a", A2A_SEND, "/a2a", {"A2A-Version": "1.0"})):
            bodies = [with_value(base, path, raw) for path in leaves(base) for raw in HOSTILE]
            bodies += [raw.encode() for raw in HOSTILE] + [b"", b"\xff", b"{", json.dumps(base).encode()[:-1]]
            for body in bodies:
                for content_type in ("application/json", "text/plain"):
                    r = await http.post(url, content=body, headers={**headers, "Content-Type": content_type})
                    what = f"{door} {content_type} {body[:200]!r} -> {r.status_code} {r.text[:300]}"
                    assert r.status_code < 500, what
                    seen[door] = seen.get(door, 0) + 1
                    if door == "chat" and r.status_code >= 400:
                        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, what
                    if door != "chat" and r.headers.get("content-type", "").startswith(
                            ("application/json", "text/event-stream")):
                        try:
                            answer = mcp_message(r) if door == "mcp" else r.json()
                        except ValueError:
                            raise AssertionError(what) from None
                        assert answer.get("error", {}).get("code") != -32603, what
    assert all(n > 300 for n in seen.values()), seen
