"""The Anthropic Messages API: a request's prompt, cache breakpoints and offered tools
in; a Message or its streaming events out."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from compound.simulator.script import Reply
from compound.simulator.wire import Offered, content_text, input_object, pieces, read_json, sse

if TYPE_CHECKING:
    from compound.simulator.app import Simulator


async def messages(sim: Simulator, request: Request) -> Response:
    """POST /v1/messages."""
    body = await read_json(request)
    if isinstance(body, JSONResponse):
        return body
    model = str(body.get("model", ""))
    system = body.get("system") or ""
    blocks: list[dict[str, Any]] = []  # every text block in order (the prompt's prefix order)
    if isinstance(system, list):
        blocks += [b for b in system if isinstance(b, dict)]
        system = "\n".join(b.get("text", "") for b in blocks)
    elif system:
        blocks.append({"type": "text", "text": system})
    for m in body.get("messages", []):
        content = m.get("content")
        blocks += ([b for b in content if isinstance(b, dict)] if isinstance(content, list)
                   else [{"type": "text", "text": content_text(content)}])
    text = "\n".join(content_text(m.get("content")) for m in body.get("messages", []))
    max_tokens = int(body.get("max_tokens") or 1024)
    prefixes = ["\n".join(str(b.get("text", "")) for b in blocks[: i + 1])
                for i, b in enumerate(blocks) if b.get("cache_control")]
    offered = Offered(
        tools=[(str(t.get("name", "")), t.get("input_schema") or {}) for t in body.get("tools") or []],
        results=[content_text(b.get("content")) for m in body.get("messages", [])
                 if isinstance(m.get("content"), list) for b in m["content"]
                 if isinstance(b, dict) and b.get("type") == "tool_result"],
        none=(body.get("tool_choice") or {}).get("type") == "none")
    got = await sim.respond("anthropic", model, system, text, max_tokens, body, prefixes=prefixes,
                            tools=offered)
    if isinstance(got, JSONResponse):
        return got
    reply, in_tok, out_tok, (read, write), cut, token_s, record = got
    usage = {"input_tokens": in_tok - read - write, "output_tokens": out_tok,
             "cache_read_input_tokens": read, "cache_creation_input_tokens": write}
    stop = "tool_use" if reply.calls else "max_tokens" if out_tok >= max_tokens else "end_turn"
    msg_id = f"msg_{uuid.uuid4().hex[:24]}"
    if body.get("stream"):
        return sse(anthropic_events(msg_id, model, reply, usage, stop), anthropic=True, cut=cut,
                   token_s=token_s, record=record)
    from anthropic.types import Message as AMessage

    answer: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text or not reply.calls else []
    answer += [{"type": "tool_use", "id": call_id, "name": name, "input": input_object(args)}
               for call_id, name, args in reply.calls]
    msg = AMessage(
        id=msg_id,
        type="message",
        role="assistant",
        model=model,
        content=answer,
        stop_reason=stop,
        stop_sequence=None,
        usage=usage,
    )
    return JSONResponse(msg.model_dump(mode="json", exclude_none=True))

def anthropic_events(msg_id: str, model: str, reply: Reply, usage: dict[str, int],
                     stop: str) -> list[tuple[str, dict[str, Any]]]:
    """The Messages API's streaming events: usage on message_start, a text block, each
    tool call a `tool_use` block whose input comes in `input_json_delta` pieces, output
    tokens (cumulative) on message_delta."""
    start_usage = {**usage, "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}}),
    ]
    index = 0
    if reply.text or not reply.calls:
        events += [("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
                   ("ping", {"type": "ping"})]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": piece}})
                   for piece in pieces(reply.text)]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    for i, (call_id, name, args) in enumerate(reply.calls, start=index):
        events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
            "type": "tool_use", "id": call_id, "name": name, "input": {}}}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": i,
                                            "delta": {"type": "input_json_delta", "partial_json": piece}})
                   for piece in pieces(args) if piece]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events += [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": usage["output_tokens"]}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events
