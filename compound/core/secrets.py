"""Every secret this process can read (provider keys, credentials in URLs, bearer
tokens) and `redact()`, the one function that takes them out of text before it leaves
the process: error text, snapshots, events, log lines.

Two nets. Values: the registry holds every configured secret whatever its shape, read
once at start from the settings and the environment (`configure`). Shapes: secrets
this process was never told about but that look like one (known key prefixes,
`Bearer ...`, `user:password@` in a URL, `?api_key=` in a query string).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from compound.core.settings import Settings

REDACTED = "[redacted]"

# A configured value shorter than this is not treated as a secret: it would scrub
# ordinary text ("sim", "1", "true", "EMPTY", "dummy", "local"). No provider issues
# keys that short.
MIN_SECRET_LENGTH = 8

# Variables whose value is a secret, by name: ANTHROPIC_API_KEY, GEMINI_API_KEY,
# AZURE_API_KEY, AZURE_OPENAI_API_KEY, GROQ_API_KEY, MISTRAL_API_KEY, REPLICATE_API_TOKEN,
# HF_TOKEN, WATSONX_APIKEY, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AZURE_AD_TOKEN,
# AZURE_CLIENT_SECRET, LITELLM_MASTER_KEY, COMPOUND_TOKEN, ... (the names litellm's
# providers and the SDKs read all end so).
SECRET_NAME = re.compile(
    r"(?i)(?:^|_)(?:API_?KEY|API_?TOKEN|API_?SECRET|ACCESS_?KEY|SECRET_?ACCESS_?KEY|SECRET_?KEY|MASTER_?KEY|"
    r"PRIVATE_?KEY|AUTH_?TOKEN|ACCESS_?TOKEN|SESSION_?TOKEN|AD_?TOKEN|TOKEN|SECRET|PASSWORD|PASSWD|KEY)$"
)
# Query parameters whose value is a secret (`?api_key=`, `?key=` as Gemini takes it).
SECRET_PARAM = re.compile(
    r"(?i)^(?:api[_-]?key|key|token|access[_-]?token|auth|authorization|sig|signature|secret|password|"
    r"client[_-]?secret|x-goog-api-key|subscription-key)$"
)

# Shapes: provider keys by their prefixes, compound's own tokens, credentials in URLs and
# in headers or key=value text. (A pattern with a group keeps that group and masks the
# rest.) Each runs only when its trigger, a substring, is in the lower-cased text: most
# text has none, and a case-blind pattern scanning every position is slow.
PATTERNS: tuple[tuple[str | tuple[str, ...], re.Pattern[str]], ...] = (
    ("sk-", re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")),  # Anthropic
    ("sk-", re.compile(r"sk-(?:proj-|svcacct-|or-v1-)?[A-Za-z0-9_\-]{16,}")),  # OpenAI, OpenRouter, DeepSeek
    ("cpd_", re.compile(r"cpd_[A-Za-z0-9_\-]{16,}")),  # compound's bearer tokens
    ("aiza", re.compile(r"AIza[0-9A-Za-z_\-]{30,}")),  # Google (Gemini, Vertex)
    ("gsk_", re.compile(r"gsk_[A-Za-z0-9]{20,}")),  # Groq
    ("xai-", re.compile(r"xai-[A-Za-z0-9]{20,}")),  # xAI
    ("hf_", re.compile(r"hf_[A-Za-z0-9]{20,}")),  # Hugging Face
    ("r8_", re.compile(r"r8_[A-Za-z0-9]{20,}")),  # Replicate
    ("pplx-", re.compile(r"pplx-[A-Za-z0-9]{20,}")),  # Perplexity
    ("nvapi-", re.compile(r"nvapi-[A-Za-z0-9_\-]{20,}")),  # NVIDIA
    (("akia", "asia"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),  # AWS access key ids
    ("bearer", re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.=+/~]{8,}")),
    ("://", re.compile(r"(://[^\s/@:?#]*:)[^\s/@?#]+(?=@)")),  # scheme://user:PASSWORD@
    ("=", re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|sig|signature|secret|password)=)"
                     r"(?!\[redacted\])[^&\s#\"'<>]+")),
    # api-key: X (Azure's header), x-api-key: X, 'api_key': 'X', api_key=X
    (("api_key", "api-key", "apikey"),
     re.compile(r"(?i)(api[_-]?key['\"]?\s*[:=]\s*['\"]?)(?!\[redacted\])[^\s'\",}&\]]{8,}")),
)


def _mask(pattern: re.Pattern[str], text: str) -> str:
    if pattern.groups:
        return pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return pattern.sub(REDACTED, text)


def variants(value: str) -> set[str]:
    """A secret as it may appear in text: as is, percent-encoded (in a URL), and
    JSON-escaped (inside an error body)."""
    out = {value, quote(value, safe=""), json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    return {v for v in out if len(v) >= MIN_SECRET_LENGTH}


def url_secrets(url: str) -> set[str]:
    """The password of `scheme://user:password@host` and the values of secret query
    parameters (`?api_key=`, `?key=`, `?token=` ...), raw and decoded."""
    found: set[str] = set()
    try:
        parts = urlsplit(url.strip())
        password = parts.password
    except ValueError:  # not a URL after all (an unbalanced '[' in the host ...)
        return found
    if password:
        found |= {password, unquote(password)}
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if SECRET_PARAM.match(name):
            found |= {value, quote(value, safe="")}
    return found


def env_secrets(environ: Mapping[str, str]) -> set[str]:
    """Every secret the environment holds: values of variables named like a key or a
    token, and credentials inside any URL-valued variable (base URLs, proxies,
    database URLs)."""
    found: set[str] = set()
    for name, value in environ.items():
        if not value:
            continue
        if SECRET_NAME.search(name):
            found.add(value.strip())
        if "://" in value:
            found |= url_secrets(value)
    return found


def _walk(value: Any, name: str = "") -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, str):
        if name and SECRET_NAME.search(name):
            yield value
        if "://" in value:
            yield from url_secrets(value)
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from _walk(getattr(value, field, None), field)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, str(key))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _walk(item, name)


def settings_secrets(settings: Settings) -> set[str]:
    """Every secret the settings hold: their SecretStr fields (provider keys, also
    from the TOML file), fields named like a key, and credentials in URLs (the
    database's, each model's `api_base`)."""
    return set(_walk(settings))


@dataclass(frozen=True, slots=True)
class SecretRegistry:
    """The configured secrets, matched in one pass (longest first, so a secret that
    contains another is masked whole)."""

    values: frozenset[str]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, secrets: Iterable[str]) -> SecretRegistry:
        values = frozenset(v for s in secrets if s for v in variants(s))
        if not values:
            return cls(values, None)
        ordered = sorted(values, key=lambda v: (-len(v), v))
        return cls(values, re.compile("|".join(re.escape(v) for v in ordered)))

    def redact(self, text: str) -> str:
        return self.pattern.sub(REDACTED, text) if self.pattern is not None else text


_registry: SecretRegistry | None = None


def configure(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> SecretRegistry:
    """Build this process's registry from the settings and the environment (at start:
    the app factory, the LLM client's construction). Called again, it starts over."""
    global _registry
    found = env_secrets(os.environ if environ is None else environ)
    if settings is not None:
        found |= settings_secrets(settings)
    _registry = SecretRegistry.of(found)
    _redact_log_records()
    return _registry


def registry() -> SecretRegistry:
    """The process's registry; built from the environment alone if nothing configured it."""
    return _registry if _registry is not None else configure()


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with every configured secret, each of `extra` (say, the key of the call
    that failed) and anything shaped like a secret replaced by `[redacted]`."""
    if not text:
        return text
    text = registry().redact(text)
    more = [s for s in extra if s]
    if more:
        text = SecretRegistry.of(more).redact(text)
    lower = text.lower()
    for trigger, pattern in PATTERNS:
        if trigger in lower if isinstance(trigger, str) else any(t in lower for t in trigger):
            text = _mask(pattern, text)
    return text


def redact_data(value: Any) -> Any:
    """`redact` over every string inside a JSON-like value (dicts, lists)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


# Every shape's trigger, each looked for with `in` (a substring search in C: over a
# snapshot's JSON, a few times faster than one regular expression of them all).
TRIGGERS = tuple(sorted({t for trigger, _ in PATTERNS for t in ((trigger,) if isinstance(trigger, str) else trigger)}))


def may_redact(text: str) -> bool:
    """Whether `redact` could change `text` or any string whose JSON form (UTF-8 as
    is) is inside it: a configured secret in one of its forms, or a shape's trigger."""
    pattern = registry().pattern
    if pattern is not None and pattern.search(text):
        return True
    lower = text.lower()
    return any(t in lower for t in TRIGGERS)


def json_redacted(value: Any) -> str:
    """Compact JSON (UTF-8 as is) of `redact_data(value)`. JSON escapes a string
    character by character, so a secret inside one shows in the text in its
    JSON-escaped form (a variant the registry holds) and a shape's trigger as is: the
    strings are walked only when the text holds one of them (most snapshots hold none)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if not may_redact(text):
        return text
    return json.dumps(redact_data(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _redact_arg(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseException):
        return redact(str(value))
    return value


def _redact_log_records() -> None:
    """Redact the standard library's log records as they are made (uvicorn's, the SDKs',
    litellm's: the lines structlog's processor never sees), message and traceback."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            # msg and args each (formatters such as uvicorn's access log read the args)
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_redact_arg(a) for a in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {k: _redact_arg(v) for k, v in record.args.items()}
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        except Exception:  # a message that cannot be formatted stays as logging would show it
            pass
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def reset() -> None:
    """Forget the registry: the next use builds it again from the environment."""
    global _registry
    _registry = None
