"""Prices per model: litellm's bundled cost map (read locally), overridden per model
by the config file. A model with no known price is refused at start."""

from __future__ import annotations

import os
from typing import Any

from compound.core.errors import ConfigError
from compound.core.settings import Settings
from compound.llm.base import Price

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _bundled(model: str) -> dict[str, Any] | None:
    import litellm

    table: dict[str, Any] = litellm.model_cost
    entry = table.get(model)
    if entry is None and "/" in model:
        entry = table.get(model.split("/", 1)[1])
    return entry


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
