"""registry.toml's recipes, and a configuration built from one.

``build_config`` stacks, lowest first: the defaults (RunConfig), a saved configuration, a
recipe, the settings given (flags, ``--set``). Import these names from ``config``. This module
imports neither torch nor any plugin.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

from kennethlm_core.errors import ConfigError
from kennethlm_core.runconfig import BUDGET_KEYS, RunConfig, coerce


def registry_path() -> Path:
    """registry.toml: $KLM_REGISTRY, else the one at the root of the source checkout."""
    env = os.environ.get("KLM_REGISTRY")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "registry.toml"


def load_registry_doc(path: Path | None = None) -> dict[str, Any]:
    path = path or registry_path()
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix or restore it") from None


def recipe_names(doc: dict[str, Any] | None = None) -> list[str]:
    doc = load_registry_doc() if doc is None else doc
    return sorted(doc.get("recipes", {}))


def load_recipe(name: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = load_registry_doc() if doc is None else doc
    recipes = doc.get("recipes", {})
    if name not in recipes:
        close = difflib.get_close_matches(name, list(recipes), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        known = ", ".join(sorted(recipes)) or f"(none: {registry_path()} has no [recipes])"
        raise ConfigError(f"unknown recipe '{name}'; {hint}known: {known}")
    return {k: v for k, v in recipes[name].items() if k != "description"}


def build_config(
    recipe: str | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < base (a saved config) < recipe < overrides. Values may be strings.

    Setting any budget (steps, tokens, time) in ``overrides`` clears the others, so
    ``--time 15m`` on a recipe with ``steps = 2000`` trains for 15 minutes.
    """
    values: dict[str, Any] = dict(base or {})
    from_recipe = load_recipe(recipe) if recipe else {}
    values.update(from_recipe)
    overrides = dict(overrides or {})
    if any(k in overrides for k in BUDGET_KEYS):
        for k in BUDGET_KEYS:
            values[k] = 0
    values.update(overrides)
    types = RunConfig().to_dict()
    cfg = RunConfig()
    for key, value in values.items():
        if key in types:
            setattr(cfg, key, coerce(key, value, types[key]))
        else:
            cfg.options[key] = value  # typed and checked against the components in resolve()
    cfg.inherited = {k for k in from_recipe if k in cfg.options and k not in overrides}
    return cfg
