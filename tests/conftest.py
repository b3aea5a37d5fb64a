"""Shared test set-up. litellm is told to stay offline before anything imports it,
and the real adapter refuses any call that would leave this machine."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("DISABLE_AIOHTTP_TRANSPORT", "True")
for _name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "COMPOUND_CONFIG", "COMPOUND_DATABASE_URL"):
    os.environ.pop(_name, None)
os.environ["COMPOUND_ALLOW_REMOTE_MODELS"] = "false"

# Fixtures live in one module per area, each owned by the code it serves.
pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.sim",
    "tests.fixtures.fakes",
    "tests.fixtures.api",
    "tests.fixtures.served",
]
