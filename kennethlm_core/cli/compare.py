"""``klm compare``: the improvement protocol on the command line, and its ledger entry."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from kennethlm_core import experiment, ledger
from kennethlm_core.cli.base import _console, _disabled, _progress, _registry, cli
from kennethlm_core.cli.options import (
    many_runs_options,
    overrides_from,
    parse_run_args,
    run_options,
)
from kennethlm_core.config import BUDGET_KEYS
from kennethlm_core.entries import secondary_entry
from kennethlm_core.errors import KLMError
from kennethlm_core.experiment import ALPHA, MIN_EFFECT, STANDARD_STEPS, Arm
from kennethlm_core.results import secondary_cell


def _arm(option: str, text: str):
    """An arm of a comparison: a recipe name, or klm run arguments in one string."""
    text = text.strip()
    if not text.startswith("-"):
        return Arm(text, recipe=text or None)
    try:
        recipe, overrides = parse_run_args(shlex.split(text))
    except (KLMError, ValueError) as e:  # a flag parse_args does not know; shlex's quotes
        raise KLMError(f"--{option} '{text}': {e}") from None
    return Arm(text, recipe, overrides)


@cli.command()
@run_options
@click.option(
    "--baseline",
    default="record",
    show_default=True,
    metavar="RECIPE|ARGS",
    help="A recipe in registry.toml, or klm run arguments in quotes.",
)
@click.option(
    "--candidate",
    required=True,
    metavar="ARGS|RECIPE",
    help="klm run arguments in quotes, applied on top of the baseline; or a recipe.",
)
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds per arm.")
@click.option(
    "--metric",
    default="bpb",
    show_default=True,
    help="Decision metric: bpb (final val_bpb) or TASK/METRIC of klm eval (sentiment/mcc).",
)
@click.option("--metric-data", help="Data for the metric's task (as klm eval --data).")
@click.option(
    "--min-effect",
    type=float,
    default=MIN_EFFECT,
    show_default=True,
    help="Smallest improvement accepted, in the metric's units.",
)
@click.option(
    "--alpha",
    type=float,
    default=ALPHA,
    show_default=True,
    help="Significance level of the one-sided tests.",
)
@click.option(
    "--branch-at",
    type=float,
    metavar="FRACTION",
    help="Start the candidate from the baseline's checkpoint at this fraction of the budget.",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    help="Start both arms from this run's checkpoint (the baseline arm is the control).",
)
@click.option("--record", is_flag=True, help="Append the result to registry.toml's ledger.")
@click.option("--promote", is_flag=True, help="If better: make the candidate the record recipe.")
@click.option(
    "--secondary-data",
    metavar="PATH|none",
    help="Data of the second, non-deciding metric that --record scores on every run "
    "(summarization: bpb of the reference and chrF++), as klm eval --data: a folder like "
    "../shared/data/eval, or the task's own file or folder. Default: the task's own data (its "
    "hub set); 'none': record without it. Checked before training.",
)
@many_runs_options("Experiment folder (default experiments/<baseline>-vs-<candidate>-...).")
@click.pass_context
def compare(
    ctx,
    baseline,
    candidate,
    seeds,
    metric,
    metric_data,
    min_effect,
    alpha,
    branch_at,
    init_from,
    jobs,
    out,
    force,
    allow_changes,
    record,
    promote,
    secondary_data,
    quiet,
    **params,
):
    """Compare a candidate with a baseline over seeds: the improvement protocol.

    Both arms train with the same seeds (same initial weights and batches) and the same budget;
    the verdict comes from a one-sided paired t-test on the final metric. Any klm run flag given
    here applies to both arms (--corpus, sizes, --set ...); the budget (--steps, --tokens or
    --time) defaults to the standard comparison budget, --steps {steps}. --seed is the first
    of the seeds (default 1).
    Runs go to the experiment folder; running the same comparison again reuses finished runs
    and resumes interrupted ones, unless their code or data changed (--allow-changes, --force).

    \b
    klm compare --candidate "--posemb none"                     vs the record recipe
    klm compare --baseline baseline --candidate "--set lr=3e-3" --corpus ../shared/data/corpus
    klm compare --candidate "--posemb none" --branch-at 0.5     does it bend the trajectory?
    """
    registry = _registry(ctx)
    recipe, shared = overrides_from(params)
    if recipe:
        raise KLMError("klm compare takes the baseline as --baseline RECIPE, not --recipe")
    if seeds < 2:
        raise KLMError("--seeds must be at least 2 for a paired test; the protocol uses 5")
    first = shared.pop("seed", 1)
    logger = shared.pop("logger", None)  # how the runs are watched, not what is compared
    comp = experiment.Comparison(
        baseline=_arm("baseline", baseline),
        candidate=_arm("candidate", candidate),
        shared=shared,
        seeds=list(range(first, first + seeds)),
        metric=metric,
        metric_data=metric_data,
        min_effect=min_effect,
        alpha=alpha,
        branch_at=branch_at,
        init_from=init_from,
        logger=logger,
    )
    say = _progress(quiet)
    if not any(k in shared for k in BUDGET_KEYS):
        shared["steps"] = STANDARD_STEPS
    experiment.arm_configs(comp, registry)  # bad arms fail in one line, before any notes
    if "time" in shared:
        say("note: a --time budget makes the verdict depend on this machine's speed and load")
    if promote and (comp.baseline.recipe != "record" or comp.baseline.overrides):
        raise KLMError("--promote needs --baseline record: a new record must beat the old one")
    secondary = None
    if secondary_data != "none" and (record or promote or secondary_data):
        secondary = experiment.SecondaryMetric(data=secondary_data)
    folder = out or experiment.default_folder(comp)
    say(f"experiment folder: {folder}")
    summary = experiment.run_comparison(
        comp,
        folder,
        registry=registry,
        jobs=jobs,
        force=force,
        allow_changes=allow_changes,
        disabled=_disabled(ctx),
        say=say,
        secondary=secondary,
    )
    _print_comparison(summary)
    if summary.get("secondary"):
        sec = summary["secondary"]
        cell = secondary_cell({sec["task"]: secondary_entry(sec)}, sec["task"])
        click.echo(f"{sec['task']} (not deciding, {sec['n']} examples a run): {cell}")
    click.echo(f"written to {folder / 'summary.json'} and {folder / 'trajectories.png'}")
    if record or promote:
        ledger.record(summary, promote, say=click.echo, warn=lambda m: print(m, file=sys.stderr))


compare.help = compare.help.replace("{steps}", str(STANDARD_STEPS))


def _print_comparison(s: dict[str, Any]) -> None:
    metric = "val_bpb" if s["metric"] == "bpb" else s["metric"]
    base, cand = s["arms"]["baseline"], s["arms"]["candidate"]
    table = Table("seed", f"baseline {metric}", f"candidate {metric}", "Δ", title=s["name"])
    for seed, b, c in zip(s["seeds"], base["values"], cand["values"], strict=True):
        table.add_row(str(seed), f"{b:.4f}", f"{c:.4f}", f"{c - b:+.4f}")
    table.add_section()
    table.add_row(
        "mean ± std",
        f"{base['mean']:.4f} ± {base['std']:.4f}",
        f"{cand['mean']:.4f} ± {cand['std']:.4f}",
        f"{s['delta']:+.4f} ± {s['delta_std']:.4f}",
    )
    table.add_row(
        "tokens/s", f"{base['tokens_per_s']:,.0f}", f"{cand['tokens_per_s']:,.0f}", "", style="dim"
    )
    console = _console()
    console.print(table)
    lo, hi = s["delta_ci"]
    colour = {"better": "green", "worse": "red"}.get(s["verdict"], "yellow")
    better = "higher" if s["higher_is_better"] else "lower"
    console.print(
        f"Δ {metric} {s['delta']:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}; {better} is better)"
    )
    console.print(
        f"one-sided paired t-test: p(better) = {s['p_better']:.2g}, p(worse) = {s['p_worse']:.2g}"
    )
    console.print(
        f"verdict: [bold {colour}]{s['verdict']}[/] "
        f"(min effect {s['min_effect']:g}, alpha {s['alpha']:g})"
    )
