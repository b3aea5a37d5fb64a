"""Settings: environment variables prefixed COMPOUND_, plus an optional TOML file.

The names of design.md section 8 are a contract; everything else here is an addition
documented in docs/design.md. The TOML file (path in COMPOUND_CONFIG) holds the same
keys in lower case, and a `[models."provider/name"]` table per model for overrides.
Environment variables win over the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from compound.core.errors import ConfigError
from compound.tools.config import McpServers

ModelList = Annotated[list[str], NoDecode]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ModelConfig(BaseModel):
    """Per-model overrides from the config file."""

    model_config = {"extra": "forbid", "frozen": True}

    api_base: str | None = None
    # Which adapter serves the model; None: by provider (docs/design.md, "LLM seam").
    adapter: Literal["anthropic", "openai", "litellm"] | None = None
    # Prices in USD per token; None means "take litellm's bundled price".
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)
    cache_read_input_token_cost: float | None = Field(default=None, ge=0)
    cache_creation_input_token_cost: float | None = Field(default=None, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)


NO_OVERRIDES = ModelConfig()  # a model the config file says nothing of (asked for on every call)


def _config_path() -> Path | None:
    raw = os.environ.get("COMPOUND_CONFIG")
    return Path(raw) if raw else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMPOUND_", extra="forbid")

    # design.md section 8 (contract names)
    database_url: str = "sqlite:///./compound.db"
    planner_model: str = "anthropic/claude-haiku-4-5"
    tier1_models: ModelList = ["anthropic/claude-haiku-4-5"]
    tier2_models: ModelList = ["anthropic/claude-sonnet-4-5"]
    tier3_models: ModelList = ["anthropic/claude-opus-4-5"]
    synthesis_tier: int = Field(default=2, ge=1, le=3)
    default_budget_usd: float = Field(default=1.0, gt=0)
    max_concurrency: int = Field(default=16, ge=1)
    max_subtasks: int = Field(default=20, ge=1)

    # additions (docs/design.md, "Settings")
    max_tokens: int = Field(default=1024, ge=1, description="max_tokens of a subtask call")
    # A tier's cascade: its first model answers, the same model checks the answer, and
    # only a failed check calls the tier's next model (docs/design.md, "Cascades").
    tier1_cascade: bool = False
    tier2_cascade: bool = False
    tier3_cascade: bool = False
    check_max_tokens: int = Field(default=16, ge=1, description="max_tokens of a cascade's check call")
    planner_max_tokens: int = Field(default=2048, ge=1)
    synthesis_max_tokens: int = Field(default=2048, ge=1)
    stream_plans: bool = Field(
        default=True, description="stream the planner's answer and start each subtask as soon as its entry "
                                  "is complete and its dependencies are done")
    max_replans: int = Field(
        default=1, ge=0, le=10, description="rounds of replanning after a subtask fails for good; 0 = off")
    call_timeout_s: float = Field(default=120.0, gt=0)
    http_transport: Literal["auto", "aiohttp", "httpx"] = Field(
        default="auto", description="the provider SDKs' HTTP stack; auto: aiohttp unless a proxy variable is set")
    max_attempts: int = Field(default=5, ge=1, description="attempts per model on transient errors")
    retry_initial_wait_s: float = Field(default=0.5, ge=0)
    retry_max_wait_s: float = Field(default=30.0, ge=0)
    user_daily_budget_usd: float | None = Field(default=None, gt=0)
    max_prompt_chars: int = Field(default=20_000, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    rate_limit_per_minute: int = Field(default=60, ge=0, description="submissions per token; 0 = off")
    open_symbiont_reads: bool = False
    token_cache_s: float = Field(default=1.0, ge=0, le=1.0, description="how long a token lookup is reused")
    token_last_used_flush_s: float = Field(default=10.0, gt=0, description="how often last_used_at is written")
    public_metrics: bool = True
    sqlite_synchronous: str = Field(default="NORMAL", pattern="^(OFF|NORMAL|FULL|EXTRA)$")
    log_level: str | None = Field(
        default=None, description="unset: INFO when stderr is not a terminal, WARNING on one (INFO with -v)")
    log_json: bool | None = None  # None: JSON when stderr is not a terminal
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    # MCP servers whose tools subtasks may use (docs/tools.md); COMPOUND_MCP_SERVERS takes JSON
    mcp_servers: McpServers = Field(default_factory=dict)
    # the bounds of a subtask's tool loop (docs/tools.md, "The tool loop")
    tool_max_turns: int = Field(default=8, ge=1, description="model turns of one subtask's tool loop")
    tool_max_calls: int = Field(default=16, ge=1, description="tool calls of one subtask's tool loop")
    tool_max_calls_per_tool: int = Field(default=8, ge=1, description="calls of one tool in one subtask's loop")
    tool_result_max_chars: int = Field(default=8000, ge=100, description="characters of a tool result kept")
    # entry points to load from the groups compound.steps and compound.hooks (docs/tools.md)
    plugins: ModelList = Field(
        default_factory=list,
        description="names of the entry points (groups compound.steps, compound.hooks) to load; comma-separated; "
                    "no other entry point is imported")
    approval_timeout_s: float = Field(default=3600.0, gt=0, description=(
        "seconds a tool call waits for a person's approval before it is denied automatically"))

    # scale-out (design.md section 7, docs/deploy.md)
    execution: Literal["inprocess", "queue"] = "inprocess"
    executor_process: bool = Field(
        default=True,
        description="inprocess execution: `compound serve` runs the executor in a child process of its own; "
                    "false: on the server's own event loop (an in-memory SQLite database always runs there)")
    dbos_system_database_url: str | None = Field(
        default=None, description="DBOS's system tables; None: the store's database (schema `dbos`)")
    queue_concurrency: int | None = Field(default=None, ge=1, description="tasks running at once, all workers")
    worker_concurrency: int = Field(default=8, ge=1, description="tasks running at once in one worker")
    queue_polling_interval_s: float = Field(
        default=1.0, gt=0, le=60,
        description="how often an idle worker polls the queue; a fallback, workers are woken by NOTIFY on enqueue")
    dead_worker_check_s: float = Field(default=2.0, gt=0, le=300, description="how often a worker looks for dead ones")
    worker_drain_s: float = Field(
        default=25.0, ge=0, le=3600,
        description="on SIGTERM a worker takes no more tasks and waits this long for its running ones")

    # provider secrets, read from the providers' own variables (never printed)
    anthropic_api_key: SecretStr | None = Field(default=None, exclude=True)
    openai_api_key: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("tier1_models", "tier2_models", "tier3_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _list_from_text(value)
        if isinstance(value, list):
            value = [str(v).strip() for v in value if str(v).strip()]
            if not value:
                raise ValueError("needs at least one model (comma-separated litellm model names)")
        return value

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _list_from_text(value) if value.strip() else []
        if isinstance(value, list):
            value = list(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _sqlalchemy_scheme(cls, value: str) -> str:
        # Heroku-style postgres:// is SQLAlchemy's postgresql://
        return "postgresql://" + value[len("postgres://"):] if value.startswith("postgres://") else value

    @field_validator("log_level", mode="after")
    @classmethod
    def _known_level(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        return value.strip().upper()

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _provider_keys(self) -> Settings:
        if self.anthropic_api_key is None and os.environ.get("ANTHROPIC_API_KEY"):
            self.anthropic_api_key = SecretStr(os.environ["ANTHROPIC_API_KEY"])
        if self.openai_api_key is None and os.environ.get("OPENAI_API_KEY"):
            self.openai_api_key = SecretStr(os.environ["OPENAI_API_KEY"])
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (the signature pydantic-settings calls)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # helpers -------------------------------------------------------------------------

    def tier_models(self, tier: int) -> list[str]:
        return {1: self.tier1_models, 2: self.tier2_models, 3: self.tier3_models}[tier]

    def cascade(self, tier: int) -> bool:
        return {1: self.tier1_cascade, 2: self.tier2_cascade, 3: self.tier3_cascade}[tier]

    def all_models(self) -> list[str]:
        seen: dict[str, None] = {self.planner_model: None}
        for tier in (1, 2, 3):
            for model in self.tier_models(tier):
                seen[model] = None
        return list(seen)

    def system_database_url(self) -> str:
        """Where DBOS keeps its queues and workflow states (queue mode)."""
        return self.dbos_system_database_url or self.database_url

    def model_config_for(self, model: str) -> ModelConfig:
        return self.models.get(model) or NO_OVERRIDES

    def models_without_access(self) -> list[tuple[str, str]]:
        """(model, variable) for each configured model with neither a provider key nor a
        base URL: every call to it will fail (the server warns at start)."""
        out = []
        for model in self.all_models():
            provider = model.split("/", 1)[0].upper() if "/" in model else "OPENAI"
            key = f"{provider}_API_KEY"
            have_key = bool(os.environ.get(key)) or (
                provider == "ANTHROPIC" and self.anthropic_api_key is not None) or (
                provider == "OPENAI" and self.openai_api_key is not None)
            have_base = bool(self.model_config_for(model).api_base) or any(
                os.environ.get(f"{provider}_{suffix}") for suffix in ("BASE_URL", "API_BASE"))
            if not have_key and not have_base:
                out.append((model, key))
        return out

    def public_dict(self) -> dict[str, Any]:
        """The effective settings with every secret masked (for `compound config show`)."""
        data = self.model_dump(mode="json", exclude={"anthropic_api_key", "openai_api_key"})
        data["database_url"] = mask_url(self.database_url)
        if self.dbos_system_database_url:
            data["dbos_system_database_url"] = mask_url(self.dbos_system_database_url)
        for name in ("anthropic_api_key", "openai_api_key"):
            secret = getattr(self, name)
            data[name] = mask_secret(secret.get_secret_value()) if secret else None
        for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_BASE", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
            if os.environ.get(name):
                data[name.lower()] = mask_url(os.environ[name])
        return data


def _list_from_text(text: str) -> list[str]:
    """A list-valued variable: `a,b` or a JSON array `["a", "b"]`."""
    if text.strip().startswith("["):
        import json

        try:
            items = json.loads(text)
        except ValueError:
            raise ValueError("starts with '[' but is not a JSON array of model names; "
                             'write a,b or ["a","b"]') from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError('a JSON list must hold model names only: ["a","b"]')
        return [i.strip() for i in items]
    return [part.strip() for part in text.split(",")]


def mask_secret(value: str) -> str:
    return "****" if len(value) < 12 else f"{value[:3]}****{value[-2:]}"


def mask_url(url: str) -> str:
    """Hide a password in a URL such as postgresql://user:pw@host/db."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:****@{host}"
    return url


# COMPOUND_* variables read outside the settings object: the config file's path, the
# CLI's server and user, the adapter's offline switch, and the test suite's and
# benchmarks' own.
OTHER_VARIABLES = frozenset({
    "COMPOUND_CONFIG", "COMPOUND_TOKEN", "COMPOUND_URL", "COMPOUND_USER", "COMPOUND_ALLOW_REMOTE_MODELS",
    "COMPOUND_TEST_PG_URL", "COMPOUND_TEST_PG_ADMIN_URL", "COMPOUND_SIM_URL", "COMPOUND_SCREENSHOT",
    "COMPOUND_BROWSER_REPEAT", "COMPOUND_FUZZ_EXAMPLES",
})


def known_variables() -> frozenset[str]:
    """Every COMPOUND_* variable compound reads: one per setting, and OTHER_VARIABLES."""
    fields = {f"COMPOUND_{name.upper()}" for name in Settings.model_fields}
    return frozenset(fields) | OTHER_VARIABLES


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """(name, closest known name or None) for each COMPOUND_* variable compound does not
    read (a typo is otherwise silently ignored), in name order."""
    import difflib

    known = known_variables()
    suffixes = {name.removeprefix("COMPOUND_"): name for name in known}
    out = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads names in any case
        if not upper.startswith("COMPOUND_") or upper in known:
            continue
        close = difflib.get_close_matches(upper.removeprefix("COMPOUND_"), suffixes, n=1, cutoff=0.6)
        out.append((name, suffixes[close[0]] if close else None))
    return out


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into one ConfigError that names each field."""
    from pydantic import ValidationError

    path = _config_path()
    if path is not None and not path.is_file():
        raise ConfigError(f"COMPOUND_CONFIG points to {path}, which is not a readable file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{loc}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    except (OSError, ValueError) as exc:  # e.g. malformed TOML
        raise ConfigError(f"cannot read settings: {exc}") from None
