"""One flat run configuration.

Precedence, lowest first: the defaults (RunConfig, the baseline recipe), a recipe from
registry.toml (``--recipe``), command-line flags, ``--set key=value``. Components may declare
options of their own (``register(..., options={"window": 64})``); those live in
``RunConfig.options`` and are set the same way. ``config.json`` stores everything flat.

This module is where the rest of the code and the plugins import all of it from. It holds
``resolve``, which checks a configuration against the installed components (names, sizes,
pairings, loggers) and fills in their options' defaults; the other parts have a module each:

    runconfig.py   the RunConfig dataclass, reading values (coerce), check_values, same_config
    flags.py       the flags of klm run (FLAGS), parse_args for an arm's text, parse_set
    recipes.py     registry.toml's recipes, build_config

This module imports neither torch nor any plugin.
"""

from __future__ import annotations

import difflib
import glob
import os
from pathlib import Path
from typing import Any

from kennethlm_core.errors import ConfigError, UnknownComponent

# isort: split
# The configuration's parts, each in a module of its own; every name stays importable from here.
from kennethlm_core.flags import (  # noqa: F401
    FLAGS,
    RECIPE_HELP,
    SET_HELP,
    SLOT_FLAGS,
    Flag,
    flag_type,
    flag_value,
    parse_args,
    parse_set,
)
from kennethlm_core.recipes import (  # noqa: F401
    build_config,
    load_recipe,
    load_registry_doc,
    recipe_names,
    registry_path,
)
from kennethlm_core.runconfig import (  # noqa: F401
    BUDGET_KEYS,
    WATCHING,
    RunConfig,
    check_values,
    coerce,
    field_names,
    field_types,
    mix_temperature,
    parse_count,
    parse_duration,
    parse_mix,
    same_config,
)

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"  # a source checkout's plugins

MODEL_SLOTS = ("attention", "posemb", "norm", "mlp")


# -- resolving a configuration against the components ---------------------------------


def resolve(cfg: RunConfig, registry: Any) -> RunConfig:
    """Check names, sizes and pairings; fill in component option defaults. Returns cfg."""
    chosen = selected_components(cfg, registry)
    declared: dict[str, Any] = {}
    for comp in [*chosen.values(), *logger_components(cfg, registry)]:
        for key, default in comp.options.items():
            declared.setdefault(key, default)
    for key in list(cfg.options):
        if key not in declared and key in cfg.inherited:
            del cfg.options[key]
            continue
        if key not in declared:
            raise ConfigError(_unknown_setting(key, cfg, registry))
        cfg.options[key] = coerce(key, cfg.options[key], declared[key])
    for key, default in declared.items():
        cfg.options.setdefault(key, default)
    check_values(cfg)
    check_pairs(chosen, registry)
    for comp in chosen.values():  # register(..., max_block_size=N): the longest context
        limit = comp.extra.get("max_block_size")
        if limit is not None and cfg.block_size > limit:
            raise ConfigError(
                f"{comp.slot} '{comp.name}' allows a context of at most {limit} tokens, "
                f"block_size is {cfg.block_size}; use --block-size {limit} or another {comp.slot}"
            )
    return cfg


def selected_components(cfg: RunConfig, registry: Any) -> dict[str, Any]:
    model = registry.get("model", cfg.model)
    slots = ["model", *model.extra.get("uses", MODEL_SLOTS)]
    slots += ["optimizer", "schedule", "tokenizer"]
    chosen = {slot: registry.get(slot, getattr(cfg, slot)) for slot in slots}
    chosen["corpus"] = corpus_component(cfg.corpus, registry)
    for name in component_names(cfg.tweak):
        chosen[f"tweak {name}"] = registry.get("tweak", name)
    for name in component_names(cfg.callback, "callback"):
        chosen[f"callback {name}"] = registry.get("callback", name)
    return chosen


def component_names(text: str, slot: str = "tweak") -> list[str]:
    """'qk-norm, softcap' -> ['qk-norm', 'softcap']: the run's tweaks (or, with ``slot``,
    callbacks), in order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{slot} {', '.join(repeated)} is listed twice; give each {slot} once")
    return names


tweak_names = component_names  # the name it had before callbacks used it too


def installed_loggers(registry: Any) -> list[str]:
    return sorted(n for n, c in registry.components["callback"].items() if c.extra.get("logger"))


def find_logger(registry: Any, name: str) -> Any:
    """The logger component ``name``, or one line saying what is installed and what to do."""
    component = registry.components["callback"].get(name)
    if component is not None:
        if component.extra.get("logger"):
            return component
        raise ConfigError(
            f"callback '{name}' is not a logger (it takes part in the run); give it with "
            f"--callback {name}"
        )
    installed = installed_loggers(registry)
    listing = f"installed loggers: {', '.join(installed) or 'none'}"
    plugin = f"logger-{name}"
    for broken in registry.broken:
        if broken.plugin == plugin:
            raise UnknownComponent(
                f"logger '{name}' is in plugin '{plugin}' ({broken.distribution}), which failed "
                f"to load ({broken.error}); reinstall or fix it; {listing}"
            )
    if plugin in registry.disabled:
        raise UnknownComponent(
            f"logger '{name}' is in plugin '{plugin}', which is disabled (--disable-plugin or "
            f"KLM_DISABLE_PLUGINS); {listing}"
        )
    package = PLUGINS / f"klm-logger-{name}"
    if (package / "pyproject.toml").exists():
        raise UnknownComponent(
            f"logger '{name}' is not installed; {listing}; install it with: "
            f"pip install -e {_shown(package)}"
        )
    shipped = sorted(p.name.removeprefix("klm-logger-") for p in PLUGINS.glob("klm-logger-*"))
    close = difflib.get_close_matches(name, sorted({*installed, *shipped}), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UnknownComponent(
        f"unknown logger '{name}'; {hint}{listing} (a logger is a plugin package in the callback "
        "slot, see docs/loggers.md)"
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def logger_components(cfg: RunConfig, registry: Any) -> list[Any]:
    """The run's loggers (``--logger``), checked: each an installed logger, none listed as a
    callback too. Not among selected_components: a logger is no part of what a run computes
    (provenance, reuse)."""
    loggers = [find_logger(registry, name) for name in component_names(cfg.logger, "logger")]
    both = sorted(set(component_names(cfg.callback, "callback")) & {c.name for c in loggers})
    if both:
        raise ConfigError(
            f"{', '.join(both)} is listed as a callback and as a logger; give it once, "
            f"with --logger {both[0]}"
        )
    return loggers


def corpus_component(corpus: str, registry: Any) -> Any:
    """A registered corpus name, else the ``path`` corpus for a file, folder or glob."""
    names = registry.names("corpus")
    if corpus in names:
        return registry.get("corpus", corpus)
    if corpus.startswith("hf:"):  # any hub dataset, hf:OWNER/NAME[:CONFIG]
        return registry.get("corpus", "hf")
    if looks_like_path(corpus):
        return registry.get("corpus", "path")
    close = difflib.get_close_matches(corpus, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"corpus '{corpus}' is neither a registered corpus nor an existing file or folder; "
        f"{hint}corpora: {', '.join(n for n in names if n not in ('path', 'hf'))}, "
        "hf:OWNER/NAME[:CONFIG] (a hub dataset), or a path"
    )


def looks_like_path(text: str) -> bool:
    return Path(text).expanduser().exists() or bool(glob.glob(os.path.expanduser(text)))


def check_pairs(chosen: dict[str, Any], registry: Any) -> None:
    """Refuse pairs where one component needs a feature the other does not provide, and two
    tweaks that hold the same model seam (``register(..., seams={"block_input"})``)."""
    held: dict[str, Any] = {}
    for comp in chosen.values():
        for seam in sorted(comp.extra.get("seams", ())):
            if seam in held:
                raise ConfigError(
                    f"{comp.slot} '{comp.name}' cannot be used with {held[seam].slot} "
                    f"'{held[seam].name}': both hold the model's {seam} seam; choose one of them"
                )
            held[seam] = comp
    for comp in chosen.values():
        for slot, needed in comp.requires.items():
            other = chosen.get(slot)
            if other is None:
                continue
            missing = sorted(needed - other.provides)
            if missing:
                able = [c.name for c in registry.components[slot].values() if needed <= c.provides]
                raise ConfigError(
                    f"{comp.slot} '{comp.name}' cannot be used with {slot} '{other.name}': "
                    f"it needs {', '.join(missing)}, which {slot} '{other.name}' does not "
                    f"provide; {slot}s that do: {', '.join(able) or 'none installed'}"
                )


def _unknown_setting(key: str, cfg: RunConfig, registry: Any) -> str:
    owners = [c for c in registry.all() if key in c.options]
    if owners:
        where = ", ".join(f"{c.slot} '{c.name}'" for c in owners)
        return f"setting '{key}' belongs to {where}, which this run does not use"
    known = sorted(field_names() | {k for c in registry.all() for k in c.options})
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown setting '{key}'{hint} (`klm run --help` lists the settings)"
