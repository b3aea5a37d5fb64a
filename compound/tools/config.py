"""The configuration of one MCP server (`[mcp_servers.NAME]` in the TOML file, or the
same table as JSON in COMPOUND_MCP_SERVERS): docs/tools.md lists every field."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from compound.core.errors import ConfigError

ENV_PREFIX = "env:"
MASK = "****"

Approval = Literal["never", "always", "unless_read_only"]
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _server_name(name: str) -> str:
    # A server's name is the first half of its tools' names (`server.tool`): no dot in it.
    if not _NAME.match(name):
        raise ValueError(f"a server's name is 1 to 64 letters, digits, '_' or '-' (its tools are named "
                         f"server.tool), not {name!r}")
    return name


ServerName = Annotated[str, AfterValidator(_server_name)]


class McpServerConfig(BaseModel):
    """One MCP server: streamable HTTP (`url`) or stdio (`command`), and what compound
    may do with its tools."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    allow: list[str] | None = None
    deny: list[str] | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    approval: Approval = "unless_read_only"
    read_only: list[str] = Field(default_factory=list)
    idempotent: list[str] = Field(default_factory=list)
    trusted: bool = False
    ping_interval_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("command", mode="before")
    @classmethod
    def _command_is_a_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f'must be a list of words, e.g. ["python", "-m", "my_server"], not the string {value!r}')
        if isinstance(value, list) and not value:
            raise ValueError('must name a program, e.g. ["python", "-m", "my_server"]')
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL of a streamable HTTP endpoint, not {value!r}")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if self.url and self.command:
            raise ValueError("set url (streamable HTTP) or command (stdio), not both")
        if not self.url and not self.command:
            raise ValueError("set url (streamable HTTP) or command (stdio); neither is set")
        if self.allow is not None and self.deny is not None:
            raise ValueError("set allow or deny, not both (allow lists the only tools used; deny the ones left out)")
        if self.headers and not self.url:
            raise ValueError("headers apply to a url server only; a command server takes env")
        if (self.env or self.cwd) and not self.command:
            raise ValueError("env and cwd apply to a command server only; a url server takes headers")
        for field, values in (("headers", self.headers), ("env", self.env)):
            for key, value in values.items():
                if value.startswith(ENV_PREFIX) and not value[len(ENV_PREFIX):].strip():
                    raise ValueError(f"{field}.{key}: 'env:' must be followed by a variable's name")
        return self

    @field_serializer("headers", "env")
    def _masked(self, values: dict[str, str]) -> dict[str, str]:
        """Dumps (`compound config show`) keep `env:NAME` references and hide literal values."""
        return {k: v if v.startswith(ENV_PREFIX) else MASK for k, v in values.items()}

    @field_serializer("url")
    def _masked_url(self, value: str | None) -> str | None:
        from compound.core.settings import mask_url

        return mask_url(value) if value else value

    @property
    def transport(self) -> Literal["http", "stdio"]:
        return "http" if self.url else "stdio"

    def allows(self, tool: str) -> bool:
        if self.allow is not None:
            return tool in self.allow
        return tool not in (self.deny or ())

    def resolved_headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        return _resolve("headers", self.headers, os.environ if environ is None else environ)

    def resolved_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        return _resolve("env", self.env, os.environ if environ is None else environ)

    def needs_approval(self, *, read_only: bool) -> bool:
        """Whether a call of a tool of this server waits for a person (section 11)."""
        return self.approval == "always" or (self.approval == "unless_read_only" and not read_only)


def _resolve(field: str, values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """`env:NAME` values read from the environment now (never kept); literal values as they are."""
    out = {}
    for key, value in values.items():
        if value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX):].strip()
            if name not in environ:
                raise ConfigError(f"{field}.{key} reads the environment variable {name}, which is not set")
            out[key] = environ[name]
        else:
            out[key] = value
    return out


McpServers = dict[ServerName, McpServerConfig]
