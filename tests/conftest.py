"""Shared test set-up. litellm is told to stay offline before anything imports it,
and the real adapter refuses any call that would leave this machine."""

from __future__ import annotations

import os
from typing import Any

from xdist.scheduler import LoadScopeScheduling

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

# Modules whose tests run together on one xdist worker, one after the other: a
# module-scoped fixture is then started once (a host per engine host, one of them a
# queue-mode cluster; MCP servers; the race cluster), and the queue-mode scale tests
# keep the CPU share their deadlines were set for.
WHOLE_MODULES = frozenset({
    "tests/test_every_host.py",
    "tests/test_tools.py",
    "tests/test_tool_demo.py",
    "tests/test_queue_race.py",
    "tests/test_scale.py",
})


class ModulesTogether(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's `load` (each test to the next free worker), except that the modules in
    WHOLE_MODULES go whole to one worker, and first, the largest first. (xdist's own
    `loadgroup` renames node ids in a way pytest 9 no longer reads.)"""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module in WHOLE_MODULES else nodeid


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """The scheduler of `-n N` with the default `--dist load`; another --dist keeps xdist's."""
    return ModulesTogether(config, log) if config.getvalue("dist") == "load" else None
