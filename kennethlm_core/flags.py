"""The flags of ``klm run``, and a comparison's arm read as its text (``parse_args``).

Import these names from ``config``. This module imports neither torch nor any plugin.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from kennethlm_core.errors import ConfigError
from kennethlm_core.runconfig import RunConfig

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
        "auto: layers, heads, width, batch (from the given one up, learning rates with it) and "
        "vocabulary chosen for the --time budget on this machine (measured tokens/s and the "
        "project's size rule).",
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
