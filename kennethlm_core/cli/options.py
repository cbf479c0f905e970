"""The run flags: ``klm run``'s options (shared by compare, ladder and sweep), and turning
them into settings (``overrides_from``) or back into a command line (``run_command``)."""

from __future__ import annotations

from typing import Any

import click

from kennethlm_core.cli.base import SLOT_FLAGS


def run_options(f):
    """The flags of `klm run`, shared by anything that takes run arguments (klm compare)."""
    opts = [
        click.option("--recipe", help="Start from a recipe in registry.toml (baseline, record)."),
        *[
            click.option(f"--{slot}", help=f"The {slot} component (klm list-plugins).")
            for slot in SLOT_FLAGS
        ],
        click.option(
            "--tweak",
            multiple=True,
            metavar="NAME",
            help="A model tweak (klm list-plugins), applied after the model is built; "
            "repeatable, in order. Replaces the recipe's tweaks.",
        ),
        click.option(
            "--callback",
            multiple=True,
            metavar="NAME",
            help="A training-loop callback (klm list-plugins), e.g. ema; repeatable, in order. "
            "Replaces the recipe's callbacks.",
        ),
        click.option(
            "--logger",
            multiple=True,
            metavar="NAME",
            help="An experiment tracker for the run: tensorboard, wandb (docs/loggers.md); "
            "repeatable. Replaces the recipe's loggers.",
        ),
        click.option("--vocab-size", type=int, help="Tokenizer vocabulary size (0: its default)."),
        click.option("--corpus", help="Corpus: sample, dagw, dynaword, hf:OWNER/NAME or a path."),
        click.option(
            "--mix",
            help="Domain weights for training batches: books=0.5,speech=0.5 (domains left out "
            "get none, but are still scored on validation), or temperature=ALPHA: weights "
            "proportional to each domain's natural share to the power ALPHA (1: natural, the "
            "default; 0: uniform).",
        ),
        click.option("--n-layer", type=int, help="Transformer blocks."),
        click.option("--n-head", type=int, help="Attention heads."),
        click.option("--n-embd", type=int, help="Width of the residual stream."),
        click.option("--block-size", type=int, help="Context length in tokens."),
        click.option("--batch-size", type=int, help="Sequences per step."),
        click.option("--lr", type=float, help="Peak learning rate."),
        click.option("--dropout", type=float, help="Dropout probability."),
        click.option(
            "--size",
            type=click.Choice(["auto"]),
            help="auto: layers, heads and width chosen for the --time budget on this machine "
            "(measured tokens/s and the project's size rule).",
        ),
        click.option("--steps", help="Budget: optimizer steps."),
        click.option("--tokens", help="Budget: training tokens (500k, 2M)."),
        click.option(
            "--time", "time_", metavar="DURATION", help="Budget: training time (90s, 15m)."
        ),
        click.option("--eval-every", type=int, help="Steps between validation evaluations."),
        click.option("--seed", type=int, help="Random seed (weights and data order)."),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--dtype", help="auto, float32 or bfloat16 (autocast)."),
        click.option(
            "--compile/--no-compile",
            "compile_",
            default=None,
            help="torch.compile the model for training (compilation counts as training time).",
        ),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any setting, including plugin options; repeatable.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def overrides_from(params: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(recipe, overrides) from the parsed flags of run_options."""
    from kennethlm_core.config import parse_set

    params = dict(params)
    recipe = params.pop("recipe", None)
    settings = params.pop("settings", ()) or ()
    if params.get("time_") is not None:
        params["time"] = params.pop("time_")
    params.pop("time_", None)
    tweaks = params.pop("tweak", ()) or ()
    callbacks = params.pop("callback", ()) or ()
    loggers = params.pop("logger", ()) or ()
    if params.get("compile_") is not None:
        params["compile"] = params.pop("compile_")
    params.pop("compile_", None)
    overrides = {k: v for k, v in params.items() if v is not None}
    if tweaks:
        overrides["tweak"] = ",".join(tweaks)
    if callbacks:
        overrides["callback"] = ",".join(callbacks)
    if loggers:
        overrides["logger"] = ",".join(loggers)
    overrides.update(parse_set(settings))
    return recipe, overrides


@click.command()
@run_options
def _run_args(**params):
    """Parses run arguments given as text (the candidate of a comparison)."""


def run_flags() -> set[str]:
    """The settings that have a flag of their own in `klm run` (the rest go through --set)."""
    names = {p.name for p in _run_args.params} - {"recipe", "settings", "time_", "compile_"}
    return names | {"time"}


def run_command(settings: dict[str, Any], recipe: str) -> str:
    """The ``klm run`` command line that trains with ``settings`` on top of ``recipe``."""
    import shlex

    flags = run_flags()
    words = ["klm", "run", "--recipe", recipe]
    for key, value in settings.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if key in flags:
            words += [f"--{key.replace('_', '-')}", text]
        else:
            words += ["--set", f"{key}={text}"]
    return shlex.join(words)


def parse_run_args(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Parse `klm run` flags given as a list of words, e.g. ["--posemb", "rope"]."""
    return overrides_from(_run_args.make_context("run", list(args)).params)
