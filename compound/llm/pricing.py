"""Prices per model: litellm's bundled cost map (read locally), overridden per model
by the config file. A model with no known price is refused at start.

The map is read from litellm's package data without importing litellm (its import
costs seconds and ~100 MB): a process whose models are all on the SDK adapters never
imports it. The file is the one litellm loads with LITELLM_LOCAL_MODEL_COST_MAP=True,
finalised as litellm does (aliases expanded); tests compare it with litellm's own."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from compound.core.errors import ConfigError
from compound.core.settings import Settings
from compound.llm.base import Price

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@cache
def cost_map() -> dict[str, Any]:
    """litellm's bundled price map, read from its package directory."""
    spec = importlib.util.find_spec("litellm")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "model_prices_and_context_window_backup.json"
        if path.is_file():
            return _finalised(json.loads(path.read_bytes()))
    import litellm  # a layout we do not know: let litellm load it

    return dict(litellm.model_cost)


def _finalised(table: dict[str, Any]) -> dict[str, Any]:
    """What litellm does to the file on load (`_expand_model_aliases`): drop its reserved
    keys; a row whose `alias_of` names another row is served as that row; an `aliases`
    list adds names for its row. An alias never replaces a canonical entry, the first
    claim wins, and a pointer to nothing (or to another pointer) is dropped."""
    table.pop("fallback_generalizations", None)
    pointers = {name: entry["alias_of"] for name, entry in table.items()
                if isinstance(entry, dict) and isinstance(entry.get("alias_of"), str)}
    owners: dict[str, str] = {}
    for name, entry in table.items():
        aliases = entry.get("aliases") if isinstance(entry, dict) else None
        if aliases is None or name in pointers:
            continue
        entry.pop("aliases", None)
        if not isinstance(aliases, list):
            continue
        for alias in aliases:
            if (alias in table and alias not in pointers) or alias in owners:
                continue
            owners[alias] = name
    for alias, target in pointers.items():
        if target in table and target not in pointers and alias not in owners:
            owners[alias] = target
    for alias in pointers.keys() - owners.keys():
        table.pop(alias)
    for alias, owner in owners.items():
        table[alias] = table[owner]
    return table


def _bundled(model: str) -> dict[str, Any] | None:
    table = cost_map()
    entry = table.get(model)
    if entry is None and "/" in model:
        entry = table.get(model.split("/", 1)[1])
    return entry


def pricer(settings: Settings) -> Callable[[str], Price]:
    """`price_of` with these settings: what an executor prices its calls with by default.
    A model's price is looked up once (settings and the bundled map do not change)."""
    return cache(lambda model: price_of(model, settings))


def price_of(model: str, settings: Settings) -> Price:
    """USD per token of `model`; ConfigError naming the model when none is known."""
    cfg = settings.model_config_for(model)
    entry = _bundled(model) or {}
    inp = cfg.input_cost_per_token
    out = cfg.output_cost_per_token
    if inp is None:
        inp = entry.get("input_cost_per_token")
    if out is None:
        out = entry.get("output_cost_per_token")
    if inp is None or out is None:
        raise ConfigError(
            f"no known price for model {model!r}: set input_cost_per_token and "
            f'output_cost_per_token under [models."{model}"] in the config file '
            "(0 is accepted for a free model)"
        )
    cache_read = cfg.cache_read_input_token_cost
    if cache_read is None:
        cache_read = entry.get("cache_read_input_token_cost") or 0.0
    cache_write = cfg.cache_creation_input_token_cost
    if cache_write is None:
        cache_write = entry.get("cache_creation_input_token_cost") or 0.0
    return Price(input=float(inp), output=float(out), cache_read=float(cache_read),
                 cache_write=float(cache_write))


def check_prices(settings: Settings) -> None:
    """Refuse to start when any configured model has no price; names every one."""
    missing = []
    for model in settings.all_models():
        try:
            price_of(model, settings)
        except ConfigError:
            missing.append(model)
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise ConfigError(
            f"no known price for {names}: set input_cost_per_token and output_cost_per_token "
            'under [models."<name>"] in the config file (COMPOUND_CONFIG)'
        )
