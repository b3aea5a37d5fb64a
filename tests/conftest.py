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

# Modules that go whole to one xdist worker, one test after the other, by the scope they
# share: a module-scoped fixture is then started once (a host per engine host, one of them
# a queue-mode cluster; MCP servers), and the heaviest queue-mode clusters (the scale
# tests, whose deadlines count on their CPU share, and the 200-task races) never run at
# the same time.
WHOLE_MODULES = {
    "tests/test_every_host.py": "every_host",
    "tests/test_tools.py": "tools",
    "tests/test_tool_demo.py": "tool_demo",
    "tests/test_scale.py": "clusters",
    "tests/test_queue_race.py": "clusters",
}


class ModulesTogether(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's `load` (each test to the next free worker), except that the modules in
    WHOLE_MODULES go to one worker by their scope, and first, the largest first. (xdist's
    own `loadgroup` renames node ids in a way pytest 9 no longer reads.)"""

    def _split_scope(self, nodeid: str) -> str:
        return WHOLE_MODULES.get(nodeid.split("::", 1)[0], nodeid)


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """The scheduler of `-n N` with the default `--dist load`; another --dist keeps xdist's."""
    return ModulesTogether(config, log) if config.getvalue("dist") == "load" else None
