"""The OpenAI adapter: `openai/...` models, and any OpenAI-compatible server behind one
(vLLM, llama.cpp, llama-cpp-python, Ollama, LM Studio, a gateway), through AsyncOpenAI;
structured output negotiated per model, down a ladder of forms (`FORMS`) until the
endpoint accepts one."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from compound.core.errors import ProviderError
from compound.core.logging import get_logger
from compound.core.settings import Settings
from compound.llm.adapter import SDKAdapter
from compound.llm.base import Completion, Delta, Message, StreamEvent, ToolChoice, ToolSpec, Usage
from compound.llm.errors import sdk_error
from compound.llm.toolwire import StreamedCalls, ToolNames, names_of, openai_calls, openai_messages, openai_tools

log = get_logger(__name__)

# Ways to ask for JSON, best first; the first four give the decoder the schema itself.
# - json_schema: OpenAI's `response_format` (OpenAI, vLLM, llama.cpp's server, Ollama
#   since 0.5, LM Studio);
# - json_object_schema: `response_format: {"type": "json_object", "schema": ...}`
#   (llama-cpp-python's server, which answers json_schema with a 500; llama.cpp's);
# - structured_outputs: vLLM's `structured_outputs: {"json": ...}` (vLLM >= 0.10.2);
# - guided_json: vLLM's older `guided_json` (removed in vLLM 0.12);
# - json_object: any JSON at all; text: no constraint (the prompt states the shape).
FORMS = ("json_schema", "json_object_schema", "structured_outputs", "guided_json", "json_object", "text")
# What a refusal of each form names in its body (a 400 or 422 is a refusal whatever it says).
_NAMES = {
    "json_schema": ("response_format", "json_schema"),
    "json_object_schema": ("response_format", "schema"),
    "structured_outputs": ("structured_outputs",),
    "guided_json": ("guided_json",),
    "json_object": ("response_format", "json_object"),
}
# Models that take max_completion_tokens and refuse max_tokens (as litellm maps them).
_COMPLETION_TOKENS_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def form_fields(form: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The request fields that ask for `form`: `response_format`, or `extra_body` (the
    SDK merges it into the request's JSON)."""
    if form == "json_schema":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}}}
    if form == "json_object_schema":
        return {"response_format": {"type": "json_object", "schema": schema}}
    if form == "structured_outputs":
        return {"extra_body": {"structured_outputs": {"json": schema}}}
    if form == "guided_json":
        return {"extra_body": {"guided_json": schema}}
    if form == "json_object":
        return {"response_format": {"type": "json_object"}}
    return {}


def refused(error: ProviderError, form: str) -> bool:
    """Is this a refusal of `form`? A 400 or 422 to a request carrying it is (some servers
    do not say why); any other status only when its body names the form's field
    (llama-cpp-python answers json_schema with a 500 naming `response_format`)."""
    if error.status in (400, 422):
        return True
    text = f"{error.body or ''} {error.message}".lower()
    return error.status is not None and any(name in text for name in _NAMES.get(form, ()))


def usage_of(u: Any) -> Usage:
    """OpenAI's prompt_tokens include cached tokens: split them out (Usage's convention)."""
    if u is None:
        return Usage()
    prompt = int(u.prompt_tokens or 0)
    details = getattr(u, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return Usage(input_tokens=max(0, prompt - cached), output_tokens=int(u.completion_tokens or 0),
                 cache_read_tokens=cached)


class OpenAIClient(SDKAdapter[Any]):
    """LLMClient over AsyncOpenAI. One provider call per `complete()`, except once per
    model and process when the endpoint refuses a response_format (one more, without it)."""

    provider = "openai"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._format: dict[str, int] = {}  # model -> index into FORMS of the next form to try
        self._worked: dict[str, str] = {}  # model -> the form its endpoint last answered

    def format_for(self, model: str) -> str:
        return FORMS[self._format.get(model, 0)]

    def structured_output(self) -> dict[str, str]:
        """model -> the structured-output form its endpoint accepted, for the models
        asked for JSON so far in this process."""
        return dict(self._worked)

    def _make(self, base: str, key: str) -> Any:
        import httpx
        import openai

        http = self.http_client(openai, httpx.Limits)
        return openai.AsyncOpenAI(api_key=key, base_url=base, max_retries=0,
                                  timeout=self.settings.call_timeout_s, http_client=http)

    def _request(self, model: str, messages: list[Message], max_tokens: int, timeout_s: float | None,
                 tools: Sequence[ToolSpec] | None, tool_choice: ToolChoice,
                 names: ToolNames) -> tuple[Any, dict[str, Any], str | None]:
        ep, client = self.client_for(model)
        limit = "max_completion_tokens" if ep.name.startswith(_COMPLETION_TOKENS_PREFIXES) else "max_tokens"
        kwargs: dict[str, Any] = {
            "model": ep.name,
            "messages": openai_messages(messages, names),
            limit: max_tokens,
            "timeout": timeout_s or self.settings.call_timeout_s,
        }
        if tools:
            kwargs["tools"] = openai_tools(tools, names)
            kwargs["tool_choice"] = tool_choice
        return client, kwargs, ep.key

    async def _send(self, client: Any, model: str, kwargs: dict[str, Any], key: str | None,
                    schema: dict[str, Any] | None) -> Any:
        """One call, or more while the endpoint refuses the structured-output form asked:
        each refusal steps down a form (`FORMS`) and is remembered for the model, for
        this process; the form that was answered is recorded (and logged when new)."""
        while True:
            form = self.format_for(model) if schema is not None else "text"
            fields = form_fields(form, schema) if schema is not None else {}
            kwargs.pop("response_format", None)
            kwargs.pop("extra_body", None)
            kwargs.update(fields)
            try:
                response = await client.chat.completions.create(**kwargs)
            except Exception as exc:
                error = sdk_error(exc, model, secrets=(key,))
                if not fields or not refused(error, form):
                    raise error from None
                self._format[model] = FORMS.index(form) + 1
                log.warning("endpoint refused a structured-output form; stepping down for this model",
                            model=model, refused=form, now=self.format_for(model), status=error.status)
                continue
            if schema is not None and self._worked.get(model) != form:
                self._worked[model] = form
                log.info("structured output: the endpoint accepts this form", model=model, form=form)
            return response

    async def complete(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        names = names_of(tools, messages)
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s, tools, tool_choice, names)
        started = time.perf_counter()
        response = await self._send(client, model, kwargs, key, json_schema)
        usage = usage_of(response.usage)
        choice = response.choices[0]
        return Completion(text=choice.message.content or "", model=model, usage=usage,
                          cost_usd=self.price(model).cost(usage), latency_s=time.perf_counter() - started,
                          finish_reason=choice.finish_reason,
                          tool_calls=openai_calls(choice.message.tool_calls, names))

    async def stream(
        self,
        *,
        model: str,
        messages: list[Message],
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[StreamEvent]:
        names = names_of(tools, messages)
        client, kwargs, key = self._request(model, messages, max_tokens, timeout_s, tools, tool_choice, names)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        parts: list[str] = []
        calls = StreamedCalls(names)
        usage = Usage()
        stop: str | None = None
        chunks = await self._send(client, model, kwargs, key, json_schema)
        try:
            async with chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = usage_of(chunk.usage)
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta is not None else None
                        if text:
                            parts.append(text)
                            yield Delta(text)
                        if choice.delta is not None and choice.delta.tool_calls:
                            calls.openai_delta(choice.delta.tool_calls)
                        if choice.finish_reason:
                            stop = choice.finish_reason
        except Exception as exc:  # the 200 came: the body was being read
            raise sdk_error(exc, model, secrets=(key,), midstream=True) from None
        yield Completion(text="".join(parts), model=model, usage=usage, cost_usd=self.price(model).cost(usage),
                         latency_s=time.perf_counter() - started, finish_reason=stop, tool_calls=calls.calls())
