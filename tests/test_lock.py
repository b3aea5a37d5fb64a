"""The lock file: every dependency and extra of pyproject.toml is pinned in uv.lock, and
what `./dev serve` installs (the runtime dependencies, no extra) holds no test tool."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEST_TOOLS = {"pytest", "playwright", "mypy", "ruff", "scipy", "matplotlib", "hypothesis", "import-linter"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _closure(packages: dict[str, dict[str, Any]], roots: list[dict[str, Any]]) -> set[str]:
    """Every package the roots pull in, extras of each dependency included."""
    seen: set[str] = set()
    extras_seen: set[tuple[str, str]] = set()
    stack = list(roots)
    while stack:
        dep = stack.pop()
        name = _norm(dep["name"])
        pkg = packages[name]
        extras = dep.get("extra", [])
        if name in seen and not extras:
            continue
        if name not in seen:
            seen.add(name)
            stack += pkg.get("dependencies", [])
        for extra in extras:
            if (name, extra) not in extras_seen:
                extras_seen.add((name, extra))
                stack += pkg.get("optional-dependencies", {}).get(extra, [])
    return seen


def test_every_dependency_and_extra_of_the_project_is_locked() -> None:
    lock = _lock()
    packages = {_norm(p["name"]): p for p in lock["package"]}
    project = _project()
    locked = packages["compound"]
    wanted = {_norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    assert wanted <= {_norm(d["name"]) for d in locked["dependencies"]}
    for extra, deps in project["optional-dependencies"].items():
        names = {_norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in deps}
        assert names <= {_norm(d["name"]) for d in locked["optional-dependencies"][extra]}, extra
    # the lock pins one version of each package it lists (a universal lock may fork by
    # platform marker, never by chance)
    for pkg in lock["package"]:
        assert pkg.get("version") or pkg["name"] == "compound", pkg["name"]


def test_serving_installs_no_test_tool_and_testing_does() -> None:
    packages = {_norm(p["name"]): p for p in _lock()["package"]}
    runtime = _closure(packages, packages["compound"]["dependencies"])
    assert {"fastapi", "anthropic", "openai", "sqlalchemy", "mcp"} <= runtime
    assert not runtime & TEST_TOOLS, sorted(runtime & TEST_TOOLS)
    with_tests = _closure(packages, packages["compound"]["dependencies"]
                          + packages["compound"]["optional-dependencies"]["test"])
    assert with_tests >= TEST_TOOLS


def test_dev_installs_from_the_lock_per_command() -> None:
    dev = (ROOT / "dev").read_text()
    assert "sync --locked" in dev  # never resolves anew: a stale lock is an error, not an upgrade
    serve = re.search(r"\*\) sync serve", dev)
    tests = re.search(r"test\|check\) sync test --extra test", dev)
    assert serve and tests
