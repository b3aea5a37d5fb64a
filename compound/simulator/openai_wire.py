"""The OpenAI Chat Completions API: a request's messages, structured-output form and
offered tools in; a ChatCompletion or its chunks out."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from compound.simulator.script import Reply, request_form
from compound.simulator.wire import Offered, content_text, pieces, read_json, sse

if TYPE_CHECKING:
    from compound.simulator.app import Simulator


async def chat_completions(sim: Simulator, request: Request) -> Response:
    """POST /v1/chat/completions (and /chat/completions)."""
    body = await read_json(request)
    if isinstance(body, JSONResponse):
        return body
    model = str(body.get("model", ""))
    msgs = body.get("messages", [])
    system = "\n".join(content_text(m.get("content")) for m in msgs if m.get("role") in ("system", "developer"))
    text = "\n".join(content_text(m.get("content")) for m in msgs if m.get("role") not in ("system", "developer"))
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 1024)
    refusal = sim.script.refusal(request_form(body))
    offered = Offered(
        tools=[(str((t.get("function") or {}).get("name", "")), (t.get("function") or {}).get("parameters") or {})
               for t in body.get("tools") or []],
        results=[content_text(m.get("content")) for m in msgs if m.get("role") == "tool"],
        none=body.get("tool_choice") == "none")
    got = await sim.respond("openai", model, system, text, max_tokens, body, refusal=refusal, tools=offered)
    if isinstance(got, JSONResponse):
        return got
    reply, in_tok, out_tok, _cached, cut, token_s, record = got
    usage = {"prompt_tokens": in_tok, "completion_tokens": out_tok, "total_tokens": in_tok + out_tok,
             "prompt_tokens_details": {"cached_tokens": 0}}
    stop = "tool_calls" if reply.calls else "length" if out_tok >= max_tokens else "stop"
    chat_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.get("stream"):
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse(openai_chunks(chat_id, model, reply, usage if with_usage else None, stop), anthropic=False,
                   cut=cut, token_s=token_s, record=record)
    from openai.types.chat import ChatCompletion

    message: dict[str, Any] = {"role": "assistant", "content": reply.text if reply.text or not reply.calls
                               else None}
    if reply.calls:
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                                 for call_id, name, args in reply.calls]
    completion = ChatCompletion(
        id=chat_id,
        object="chat.completion",
        created=int(time.time()),
        model=model,
        choices=[{"index": 0, "finish_reason": stop, "message": message}],
        usage=usage,
    )
    return JSONResponse(completion.model_dump(mode="json", exclude_none=True))


def openai_chunks(chat_id: str, model: str, reply: Reply, usage: dict[str, Any] | None,
                  stop: str) -> list[tuple[str, dict[str, Any]]]:
    """Chat Completions chunks: the text, then each tool call in `delta.tool_calls`
    (id and name first, then the arguments in pieces); with
    stream_options.include_usage a last chunk with no choices carries the usage (and
    every other chunk has usage null)."""
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> tuple[str, dict[str, Any]]:
        data = {"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}
        if usage is not None:
            data.setdefault("usage", None)
        return "", data

    chunks = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    if reply.text or not reply.calls:
        chunks += [chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces(reply.text)]
    for i, (call_id, name, args) in enumerate(reply.calls):
        head = {"index": i, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(chunk([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]))
        chunks += [chunk([{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": p}}]},
                           "finish_reason": None}]) for p in pieces(args) if p]
    chunks.append(chunk([{"index": 0, "delta": {}, "finish_reason": stop}]))
    if usage is not None:
        chunks.append(chunk([], usage=usage))
    return chunks
