"""tests/conftest.py groups modules on one xdist worker by overriding the protected
`LoadScopeScheduling._split_scope`: it is still there, with the signature the override
has, in the installed pytest-xdist; pyproject.toml pins pytest-xdist to the release
range it was checked against; and the override maps the modules it names."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

from tests.conftest import WHOLE_MODULES, ModulesTogether

ROOT = Path(__file__).resolve().parents[1]


def test_the_overridden_method_is_still_xdists() -> None:
    assert list(inspect.signature(LoadScopeScheduling._split_scope).parameters) == ["self", "nodeid"]
    assert ModulesTogether._split_scope is not LoadScopeScheduling._split_scope


def test_the_modules_named_go_by_their_scope_and_the_rest_alone() -> None:
    split = ModulesTogether._split_scope
    assert split(None, "tests/test_scale.py::test_kill_worker_mid_task") == "clusters"  # type: ignore[arg-type]
    assert split(None, "tests/test_queue_race.py::test_x[a]") == "clusters"  # type: ignore[arg-type]
    assert split(None, "tests/test_api.py::test_y") == "tests/test_api.py::test_y"  # type: ignore[arg-type]
    assert set(WHOLE_MODULES.values()) == {"every_host", "tools", "tool_demo", "clusters"}


def test_pytest_xdist_is_pinned_to_the_checked_range() -> None:
    test_deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(d.startswith("pytest-xdist>=3.6,<3.9") for d in test_deps)
    major, minor = (int(x) for x in version("pytest-xdist").split(".")[:2])
    assert (3, 6) <= (major, minor) < (3, 9)
