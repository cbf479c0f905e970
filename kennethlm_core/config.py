"""One flat run configuration.

Precedence, lowest first: the defaults below (the baseline recipe), a recipe from
registry.toml (``--recipe``), command-line flags, ``--set key=value``. Components may declare
options of their own (``register(..., options={"window": 64})``); those live in
``RunConfig.options`` and are set the same way. ``config.json`` stores everything flat.

This module imports neither torch nor any plugin.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kennethlm_core.errors import ConfigError, UnknownComponent

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"  # a source checkout's plugins

MODEL_SLOTS = ("attention", "posemb", "norm", "mlp")


@dataclass
class RunConfig:
    # components, one per slot
    model: str = "gpt"
    attention: str = "naive"
    posemb: str = "learned"
    norm: str = "layernorm"
    mlp: str = "gelu"
    optimizer: str = "adamw"
    schedule: str = "cosine"
    tokenizer: str = "char"
    vocab_size: int = 0  # 0: the tokenizer's own default
    corpus: str = "sample"  # a registered corpus name, or a path (file, folder, glob)
    # domain weights for training batches: "books=0.5,speech=0.5" (domains left out get none),
    # "temperature=0.5" (weights proportional to each natural share to the power 0.5: 1 is
    # natural, 0 uniform), or "" (natural: each domain's share of the training tokens)
    mix: str = ""
    tweak: str = ""  # model tweaks applied after the model is built, in order: "qk-norm,softcap"
    callback: str = ""  # training-loop callbacks, in order: "ema"
    # experiment trackers (callbacks that only watch the run, see loggers.py), in order:
    # "tensorboard,wandb"; like the settings below, not part of what a run computes (WATCHING)
    logger: str = ""
    log_every: int = 10  # steps between a logger's train/ points
    group: str = ""  # loggers group runs by it (klm compare: the experiment folder's name)
    arm: str = ""  # the arm of a comparison the run belongs to (set by klm compare)
    # model shape
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    bias: bool = False
    dropout: float = 0.0
    residual: bool = True  # False only to show, in the ladder, what residual connections buy
    size: str = ""  # "auto": n_layer, n_head, n_embd chosen for the time budget (sizing.py)
    # optimisation
    batch_size: int = 12
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # sequence-length warm-up: over this fraction of the budget the training rows are a
    # quarter, then half of block_size long (the same tokens per step); 0: off
    seq_warmup: float = 0.0
    # budget: training stops at the first limit reached; 0 means no limit of that kind
    steps: int = 600
    tokens: int = 0
    time: float = 0.0  # seconds of training (evaluation does not count)
    # evaluation
    eval_every: int = 100
    eval_bytes: int = 65_536  # validation bytes scored at each evaluation during training
    final_eval_bytes: int = 1_048_576  # validation bytes scored for the run's summary
    eval_stride: int = 0  # targets scored per window; 0: block_size // 2 (see bits_per_byte)
    val_fraction: float = 0.05  # documents in validation (by a hash of their id)
    test_fraction: float = 0.05  # documents in test: held back, never used to choose anything
    tokenizer_train_bytes: int = 16_000_000  # text a tokenizer may read to learn its vocabulary
    # system
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # 0: torch's default
    compile: bool = False
    # component options (declared by plugins), e.g. {"window": 64}
    options: dict[str, Any] = field(default_factory=dict)
    # options that came from the recipe, not the command line: resolve() drops those no chosen
    # component declares (rope_base after --posemb none). Not part of the saved configuration.
    inherited: set[str] = field(default_factory=set, repr=False, compare=False)

    # -- conversions ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        saved = field_names()
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in saved}
        d.update((k, v) for k, v in sorted(self.options.items()) if k not in d)  # core wins
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = field_names()
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        cfg.options = {k: v for k, v in d.items() if k not in names}
        return cfg

    def get(self, key: str, default: Any = None) -> Any:
        """A component option (or a core field) by name."""
        if key in self.options:
            return self.options[key]
        return getattr(self, key, default)

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# Settings that change how a run is watched, never what it computes: a finished run matches a
# configuration that differs only in these, and a resumed run may change them.
WATCHING = ("logger", "log_every", "group", "arm")


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(RunConfig)} - {"options", "inherited"}


def field_types() -> dict[str, type]:
    defaults = RunConfig()
    return {name: type(getattr(defaults, name)) for name in field_names()}


# -- parsing values ----------------------------------------------------------------------

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str | float | int) -> float:
    """'90s', '15m', '1h30m', '90' (seconds) -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(text.strip().lower())
    if not text.strip() or not m or not any(m.groups()):
        raise ConfigError(f"cannot read duration {text!r}; write it like 90s, 15m or 1h30m")
    h, mins, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + s


def parse_count(text: str | int) -> int:
    """'1000', '2M', '500k', '1e6' -> int."""
    if isinstance(text, int):
        return text
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(float(t))
    except (ValueError, OverflowError):
        raise ConfigError(f"cannot read count {text!r}; write it like 600, 500k or 2M") from None


def coerce(key: str, value: Any, like: Any) -> Any:
    """Turn ``value`` (often a string from the command line) into the type of ``like``.

    Budgets and byte counts (``tokens``, ``steps``, ``*_bytes``) may be written like 2M or 500k.
    """
    if key == "time":
        return parse_duration(value)
    if (key in ("tokens", "steps") or key.endswith("_bytes")) and isinstance(value, str):
        return parse_count(value)
    if not isinstance(value, str):
        if isinstance(like, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    try:
        if isinstance(like, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(like, int):
            return int(float(text)) if re.fullmatch(r"-?\d+(\.0*)?(e\d+)?", text) else int(text)
        if isinstance(like, float):
            return float(text)
    except (ValueError, OverflowError):
        kind = {bool: "true or false", int: "an integer", float: "a number"}[type(like)]
        raise ConfigError(f"{key} must be {kind}, got {value!r}") from None
    if like is None:  # an option without a typed default: guess from the text
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


# -- the flags of klm run ----------------------------------------------------------------------
# The settings that have a flag of their own in `klm run` (and in klm compare's arms, klm ladder
# and klm sweep); every other setting, plugin options too, is given with --set KEY=VALUE. A
# flag's name and type are its RunConfig field's: cli/options.py makes the command line's
# options from this table and parse_args reads an arm's text with it, so a new flag is one line.

SLOT_FLAGS = ("model", "attention", "posemb", "norm", "mlp", "optimizer", "schedule", "tokenizer")


@dataclass(frozen=True)
class Flag:
    help: str
    metavar: str | None = None
    repeat: bool = False  # repeatable, in order: the setting is the comma-joined list
    text: bool = False  # taken as text and read by coerce (budgets: 500k, 15m)
    choices: tuple[str, ...] = ()


FLAGS: dict[str, Flag] = {
    **{slot: Flag(f"The {slot} component (klm list-plugins).") for slot in SLOT_FLAGS},
    "tweak": Flag(
        "A model tweak (klm list-plugins), applied after the model is built; repeatable, in "
        "order. Replaces the recipe's tweaks.",
        metavar="NAME",
        repeat=True,
    ),
    "callback": Flag(
        "A training-loop callback (klm list-plugins), e.g. ema; repeatable, in order. "
        "Replaces the recipe's callbacks.",
        metavar="NAME",
        repeat=True,
    ),
    "logger": Flag(
        "An experiment tracker for the run: tensorboard, wandb (docs/loggers.md); repeatable. "
        "Replaces the recipe's loggers.",
        metavar="NAME",
        repeat=True,
    ),
    "vocab_size": Flag("Tokenizer vocabulary size (0: its default)."),
    "corpus": Flag("Corpus: sample, dagw, dynaword, hf:OWNER/NAME or a path."),
    "mix": Flag(
        "Domain weights for training batches: books=0.5,speech=0.5 (domains left out get none, "
        "but are still scored on validation), or temperature=ALPHA: weights proportional to "
        "each domain's natural share to the power ALPHA (1: natural, the default; 0: uniform)."
    ),
    "n_layer": Flag("Transformer blocks."),
    "n_head": Flag("Attention heads."),
    "n_embd": Flag("Width of the residual stream."),
    "block_size": Flag("Context length in tokens."),
    "batch_size": Flag("Sequences per step."),
    "lr": Flag("Peak learning rate."),
    "dropout": Flag("Dropout probability."),
    "size": Flag(
        "auto: layers, heads and width chosen for the --time budget on this machine (measured "
        "tokens/s and the project's size rule).",
        choices=("auto",),
    ),
    "steps": Flag("Budget: optimizer steps.", text=True),
    "tokens": Flag("Budget: training tokens (500k, 2M).", text=True),
    "time": Flag("Budget: training time (90s, 15m).", metavar="DURATION", text=True),
    "eval_every": Flag("Steps between validation evaluations."),
    "seed": Flag("Random seed (weights and data order)."),
    "device": Flag("auto, cpu, cuda, cuda:N or mps."),
    "dtype": Flag("auto, float32 or bfloat16 (autocast)."),
    "compile": Flag(
        "torch.compile the model for training (compilation counts as training time)."
    ),  # a switch: --compile / --no-compile
}
RECIPE_HELP = "Start from a recipe in registry.toml (baseline, record)."
SET_HELP = "Override any setting, including plugin options; repeatable."


def flag_type(key: str) -> type:
    """The type a flag's value is read as: its field's (str for the budgets, read later)."""
    return str if FLAGS[key].text else type(getattr(RunConfig(), key))


def flag_value(key: str, text: str) -> Any:
    """A flag's value as the command line reads it; a wrong one is one line."""
    kind, flag = flag_type(key), FLAGS[key]
    if flag.choices and text not in flag.choices:
        raise ConfigError(f"--{key.replace('_', '-')} takes {' or '.join(flag.choices)}")
    try:
        return kind(text)
    except ValueError:
        what = {int: "an integer", float: "a number"}[kind]
        raise ConfigError(f"--{key.replace('_', '-')} takes {what}, got {text!r}") from None


def parse_args(words: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``klm run`` flags given as words (a comparison's arm, ``["--posemb", "rope", "--set",
    "lr=3e-4"]``) -> (recipe, settings): the settings the command line gives for them."""
    recipe, settings, repeated, sets = None, {}, {}, []
    words = iter(words)
    for word in words:
        name, eq, value = word.removeprefix("--").partition("=")
        key = name.replace("-", "_")
        if not word.startswith("--") or key not in (*FLAGS, "recipe", "set", "no_compile"):
            known = [f"--{k.replace('_', '-')}" for k in (*FLAGS, "recipe", "set")]
            close = difflib.get_close_matches(f"--{name}", known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"no such option '{word}'{hint}")
        if key in ("compile", "no_compile"):
            settings["compile"] = key == "compile"
            continue
        if not eq:
            value = next(words, None)
            if value is None:
                raise ConfigError(f"option '{word}' requires an argument")
        if key == "recipe":
            recipe = value
        elif key == "set":
            sets.append(value)
        elif FLAGS[key].repeat:
            repeated.setdefault(key, []).append(value)
        else:
            settings[key] = flag_value(key, value)
    settings |= {key: ",".join(values) for key, values in repeated.items()}
    return recipe, settings | parse_set(sets)


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['lr=3e-4', 'window=32'] -> {'lr': '3e-4', 'window': '32'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][\w.-]*", key.strip()):
            raise ConfigError(f"--set expects key=value, got {item!r} (for example --set lr=3e-4)")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def parse_mix(text: str) -> dict[str, float]:
    """'books=0.5,speech=0.3' -> {'books': 0.5, 'speech': 0.3}; '' -> {} (natural proportions).

    Which domains exist is checked against the corpus later (data.mix_weights).
    """
    out: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",") if text.strip()):
        name, sep, value = (x.strip() for x in item.partition("="))
        try:
            weight = float(value) if sep and name else math.nan
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"--mix expects domain=weight pairs with weights >= 0, like "
                f"books=0.5,speech=0.3,wiki=0.2; got {item!r}"
            )
        if name in out:
            raise ConfigError(f"--mix gives domain '{name}' twice; give each domain once")
        out[name] = weight
    if out and not any(out.values()):
        raise ConfigError("--mix gives every domain weight 0; give one a positive weight")
    return out


def mix_temperature(text: str) -> float | None:
    """'temperature=0.5' -> 0.5, the exponent alpha of a tempered mix: each domain's weight is
    proportional to its natural share of the training tokens to the power alpha (1: the natural
    mix, 0: every domain alike, between: small domains drawn more often than their share).
    None when ``text`` is not of that form (domain weights, or "" for the natural mix)."""
    name, sep, value = text.partition("=")
    if name.strip() != "temperature" or not sep:
        return None
    try:
        alpha = float(value)
    except ValueError:
        alpha = math.nan
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(
            f"--mix temperature=ALPHA takes one number >= 0 and nothing else (1: the natural "
            f"mix, 0: uniform, 0.5: between), got {text.strip()!r}"
        )
    return alpha


# -- recipes -----------------------------------------------------------------------------


def same_config(saved: dict[str, Any], cfg: RunConfig) -> bool:
    """Whether a run folder's config.json describes the run `cfg` asks for.

    `threads` (how many cores a run used) is not part of what a run is, nor are the WATCHING
    settings (its loggers), a run that asks for the natural mix matches the resolved weights
    that config.json records for it, and a setting added to the core after the run was made
    reads as its default (a run from before `tweak` existed had none).
    """
    wanted = cfg.to_dict()
    saved = {**RunConfig().to_dict(), **saved}
    if not cfg.mix:
        saved["mix"] = ""
    for key in ("threads", *WATCHING):
        saved.pop(key, None)
        wanted.pop(key, None)
    return saved == wanted


def registry_path() -> Path:
    """registry.toml: $KLM_REGISTRY, else the one at the root of the source checkout."""
    env = os.environ.get("KLM_REGISTRY")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "registry.toml"


def load_registry_doc(path: Path | None = None) -> dict[str, Any]:
    import tomllib

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


# -- building and checking a configuration -------------------------------------------------

BUDGET_KEYS = ("steps", "tokens", "time")


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
    import glob

    return Path(text).expanduser().exists() or bool(glob.glob(os.path.expanduser(text)))


def check_values(cfg: RunConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg.n_layer >= 1, f"n_layer must be at least 1, got {cfg.n_layer}")
    need(
        cfg.size in ("", "auto"),
        f"size must be auto (or empty: the shape as given), got {cfg.size!r}",
    )
    need(
        cfg.size != "auto" or cfg.time > 0,
        "--size auto picks the shape for a time budget: give one with --time (15m), or choose "
        "the shape yourself (--n-layer, --n-embd, --n-head)",
    )
    need(cfg.n_head >= 1, f"n_head must be at least 1, got {cfg.n_head}")
    need(cfg.n_embd >= 1, f"n_embd must be at least 1, got {cfg.n_embd}")
    need(
        cfg.n_embd % cfg.n_head == 0,
        f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head}); "
        f"try --n-embd {cfg.n_head * max(1, round(cfg.n_embd / cfg.n_head))}",
    )
    need(cfg.block_size >= 1, f"block_size must be at least 1, got {cfg.block_size}")
    need(cfg.batch_size >= 1, f"batch_size must be at least 1, got {cfg.batch_size}")
    need(
        cfg.vocab_size >= 0,
        f"vocab_size must be positive (or 0 for the default), got {cfg.vocab_size}",
    )
    need(cfg.lr > 0, f"lr must be positive, got {cfg.lr}")
    need(0 <= cfg.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    need(0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout}")
    need(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
    need(cfg.grad_clip >= 0, f"grad_clip must be >= 0 (0 turns it off), got {cfg.grad_clip}")
    need(cfg.warmup_steps >= 0, f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
    need(0 <= cfg.seq_warmup < 1, f"seq_warmup must be in [0, 1), got {cfg.seq_warmup}")
    need(
        not cfg.seq_warmup or cfg.block_size % 4 == 0,
        f"seq_warmup needs a block_size divisible by 4 (it trains on quarter and half rows "
        f"first), got {cfg.block_size}; try --block-size {max(4, cfg.block_size // 4 * 4)}",
    )
    for key in BUDGET_KEYS:
        need(getattr(cfg, key) >= 0, f"{key} must be >= 0, got {getattr(cfg, key)}")
    need(
        any(getattr(cfg, k) > 0 for k in BUDGET_KEYS),
        "no training budget: give --steps N, --tokens N or --time 15m",
    )
    need(cfg.eval_every >= 1, f"eval_every must be at least 1, got {cfg.eval_every}")
    need(cfg.log_every >= 1, f"log_every must be at least 1, got {cfg.log_every}")
    need(cfg.eval_bytes >= 1 and cfg.final_eval_bytes >= 1, "eval_bytes must be positive")
    if mix_temperature(cfg.mix) is None:  # a temperature is checked by mix_temperature
        parse_mix(cfg.mix)  # its syntax; its domain names are checked against the corpus
    need(0 < cfg.val_fraction < 1, f"val_fraction must be in (0, 1), got {cfg.val_fraction}")
    need(
        0 < cfg.test_fraction and cfg.val_fraction + cfg.test_fraction < 1,
        f"test_fraction must be positive and val_fraction + test_fraction below 1, got "
        f"{cfg.val_fraction} + {cfg.test_fraction}",
    )
    need(
        0 <= cfg.eval_stride <= cfg.block_size,
        f"eval_stride must be between 0 (block_size // 2) and block_size ({cfg.block_size}), "
        f"got {cfg.eval_stride}",
    )
    need(cfg.threads >= 0, f"threads must be >= 0, got {cfg.threads}")
    need(
        re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device) is not None,
        f"device must be auto, cpu, cuda, cuda:N or mps, got '{cfg.device}'",
    )
    need(
        cfg.dtype in ("auto", "float32", "bfloat16", "float16"),
        f"dtype must be auto, float32, bfloat16 or float16, got '{cfg.dtype}'",
    )


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
