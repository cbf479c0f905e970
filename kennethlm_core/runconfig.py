"""The RunConfig dataclass: every setting of a run and its default (the baseline recipe),
how a value given as text is read (``coerce``: budgets like 2M or 15m, domain weights), how
the values are checked (``check_values``), and whether a saved run's config.json describes
the run a configuration asks for (``same_config``).

The rest of the configuration builds on it: ``flags.py`` (the flags of klm run and an arm's
text), ``recipes.py`` (registry.toml's recipes, ``build_config``) and ``config.py``
(``resolve``: the chosen components, checked). Import these names from ``config``, which
holds them all. This module imports neither torch nor any plugin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from kennethlm_core.errors import ConfigError


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
    size: str = ""  # "auto": shape, batch, vocabulary chosen for the time budget (sizing.py)
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


# -- domain weights ----------------------------------------------------------------------


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


# -- checking values ---------------------------------------------------------------------

BUDGET_KEYS = ("steps", "tokens", "time")


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


# -- matching a saved run ----------------------------------------------------------------


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
