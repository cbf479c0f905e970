"""``klm ladder``, ``klm sweep`` and ``klm plot``: studies of many runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from kennethlm_core import sweeptable
from kennethlm_core.cli.base import _console, _disabled, _progress, _registry, cli
from kennethlm_core.cli.options import (
    many_runs_options,
    overrides_from,
    run_command,
    run_options,
)
from kennethlm_core.config import BUDGET_KEYS, parse_count
from kennethlm_core.errors import KLMError
from kennethlm_core.experiment import STANDARD_STEPS

# -- klm ladder ------------------------------------------------------------------------------


@cli.command()
@run_options
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per step.")
@click.option("--list", "list_", is_flag=True, help="Only print each step's klm run command.")
@many_runs_options("Ladder folder (default experiments/ladder-<budget>-...).")
@click.pass_context
def ladder(ctx, seeds, jobs, out, force, allow_changes, list_, quiet, **params):
    """From a bigram table to a GPT, one change at a time: train every step, compare them.

    \b
    bigram -> mean of the past -> one head -> four heads -> + feed-forward -> four blocks
    -> + residual -> + layer norm -> + dropout -> scaled up
    Every step trains on the same seeds, data and budget (default --steps {steps}); any klm run
    flag given here applies to every step (--corpus, --tokenizer, --set ...) unless the step
    itself sets it. --recipe is the starting point (default baseline). Runs go to one folder;
    running the same ladder again reuses finished runs. Prints val_bpb per step and saves
    ladder.png.
    """
    # imports torch: not at the top, for `klm --help`
    from kennethlm_core import ladder as ladder_mod

    registry = _registry(ctx)
    recipe, shared = overrides_from(params)
    recipe = recipe or ladder_mod.BASE_RECIPE
    if seeds < 1:
        raise KLMError("--seeds must be at least 1")
    first = shared.pop("seed", 1)
    if not any(k in shared for k in BUDGET_KEYS):
        shared["steps"] = STANDARD_STEPS
    steps = ladder_mod.LADDER
    ladder_mod.step_configs(shared, registry, recipe, steps)  # bad settings fail here
    if list_:
        for step, changes in zip(steps, ladder_mod.step_overrides(steps), strict=True):
            click.echo(f"# {step.name}: {step.change}")
            click.echo(run_command({**shared, **changes}, recipe))
        return
    folder = out or ladder_mod.default_folder(shared)
    say = _progress(quiet)
    say(f"ladder folder: {folder}")
    summary = ladder_mod.run_ladder(
        shared,
        folder,
        registry=registry,
        seeds=list(range(first, first + seeds)),
        recipe=recipe,
        jobs=jobs,
        force=force,
        allow_changes=allow_changes,
        disabled=_disabled(ctx),
        say=say,
    )
    _print_ladder(summary)
    click.echo(f"written to {folder / 'summary.json'} and {folder / 'ladder.png'}")


ladder.help = ladder.help.replace("{steps}", str(STANDARD_STEPS))


def _print_ladder(s: dict[str, Any]) -> None:
    budget = ", ".join(f"{v:g} {k}" for k, v in s["budget"].items())
    n = len(s["seeds"])
    title = f"Building GPT step by step · {budget} · {n} seed{'s' * (n > 1)} · {s['machine']}"
    table = Table("step", "change", "val_bpb", "Δ", "params", "tok/s", title=title)
    for r in s["steps"]:
        value = f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if n > 1 else "")
        delta = "" if r["delta"] is None else f"{r['delta']:+.4f}"
        colour = "green" if r["delta"] is not None and r["delta"] < 0 else "red"
        table.add_row(
            r["step"],
            r["change"],
            value,
            f"[{colour}]{delta}[/]" if delta else "",
            f"{r['params']:,}",
            f"{r['tokens_per_s']:,.0f}",
        )
    console = _console()
    if not console.is_terminal:  # a log file or a pipe: no wrapping at 80 columns
        console.width = max(console.width, 110)
    console.print(table)


# -- klm sweep -------------------------------------------------------------------------------


@cli.command()
@run_options
@click.option(
    "--grid",
    multiple=True,
    metavar="KEY=V1,V2",
    help="A setting and its values (split at ';' instead when a value has commas); "
    "repeatable: the sweep trains every combination.",
)
@click.option(
    "--bytes",
    "text_bytes",
    metavar="N",
    help="Budget: training text in UTF-8 bytes (500k, 20M), the same for every cell: each "
    "trains on the tokens that hold that much text, by its tokenizer and mix.",
)
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per cell.")
@click.option("--x", "x_key", metavar="KEY", help="The grid key the plot draws along.")
@click.option(
    "--by-domain", is_flag=True, help="Also print val_bpb per scored domain for every cell."
)
@click.option("--markdown", is_flag=True, help="Print the tables in Markdown, for a page.")
@many_runs_options("Sweep folder (default experiments/sweep-<keys>-<budget>-...).")
@click.pass_context
def sweep(ctx, grid, text_bytes, seeds, x_key, by_domain, markdown, jobs, out, force,
          allow_changes, quiet, **params):  # fmt: skip
    """Train a grid of settings on seeds: val_bpb per cell, a table and a plot.

    \b
    klm sweep --grid tokenizer=bpe,unigram --grid vocab_size=1024,4096 --seeds 3
    klm sweep --recipe record --grid lr=1e-3,3e-3,1e-2 --time 5m --jobs 2
    klm sweep --grid mix=temperature=0,temperature=0.5,temperature=1 --corpus PATH

    Every cell trains on the same seeds and budget (default --steps {steps}; --bytes N: the
    same text for every cell, whatever its tokenizer); any klm run flag given here applies to
    every cell. A cell that cannot run (the byte tokenizer with a vocabulary size, a setting
    the configuration refuses, the same run as another cell) is skipped with its reason.
    Running the same sweep again reuses finished runs and resumes interrupted ones. Prints
    mean ± std of val_bpb per cell and saves summary.json and sweep.png (val_bpb against the
    --x key, default the last numeric grid key; one line per value of the other keys).
    """
    from kennethlm_core import sweep as sweep_mod  # imports torch: not at the top, for `klm --help`

    registry = _registry(ctx)
    recipe, shared = overrides_from(params)
    if seeds < 1:
        raise KLMError("--seeds must be at least 1")
    first = shared.pop("seed", 1)
    axes = sweep_mod.parse_grid(grid, registry)
    twice = [a.key for a in axes if a.key in shared]
    if twice:
        raise KLMError(f"{twice[0]} is set by --grid and by a flag or --set; give it once")
    text_bytes = parse_count(text_bytes) if text_bytes is not None else None
    if text_bytes is not None and text_bytes < 1:
        raise KLMError(f"--bytes must be at least 1, got {text_bytes}")
    text_bytes = text_bytes or 0
    budgets = [a.key for a in axes if a.key in BUDGET_KEYS] + [
        k for k in BUDGET_KEYS if k in shared
    ]
    budgets += ["bytes"] * (text_bytes != 0)
    if len(budgets) > 1:
        raise KLMError(f"give one budget, in the grid or as a flag; got {' and '.join(budgets)}")
    if not budgets:
        shared["steps"] = STANDARD_STEPS
    x_key = sweep_mod.x_axis(axes, x_key)
    checked = {**shared, "tokens": text_bytes} if text_bytes else shared
    sweep_mod.grid_cells(axes, checked, registry, recipe)  # refused cells fail here, quietly
    folder = out or sweep_mod.default_folder(axes, shared, text_bytes)
    if folder.exists() and not folder.is_dir():
        raise KLMError(f"{folder} is a file; give --out a folder for the sweep")
    say = _progress(quiet)
    say(f"sweep folder: {folder}")
    summary = sweep_mod.run_sweep(
        axes,
        shared,
        folder,
        registry=registry,
        seeds=list(range(first, first + seeds)),
        recipe=recipe,
        x=x_key,
        jobs=jobs,
        force=force,
        allow_changes=allow_changes,
        disabled=_disabled(ctx),
        say=say,
        text_bytes=text_bytes,
    )
    console = _console()
    if not console.is_terminal:  # a log file or a pipe: no wrapping at 80 columns
        console.width = max(console.width, 120)
    if markdown:
        click.echo(f"{sweeptable.title(summary)}\n\n{sweeptable.markdown(summary)}\n")
        if by_domain:
            click.echo(f"{sweeptable.markdown(summary, by_domain=True)}\n")
    else:
        console.print(sweeptable.table(summary))
        if by_domain:
            console.print(sweeptable.table(summary, by_domain=True))
    for line in sweeptable.notes(summary):
        console.print(line, soft_wrap=True)
    plots = ["sweep.png"] + ["sweep-domains.png"] * (len(sweeptable.domains(summary)) > 1)
    click.echo(
        f"written to {folder / 'summary.json'} and {', '.join(str(folder / p) for p in plots)}"
    )


sweep.help = sweep.help.replace("{steps}", str(STANDARD_STEPS))


# -- klm plot --------------------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="PNG file (default: trajectories.png in the one folder given, else here).",
)
@click.option("--title", help="Title above the panels.")
def plot(paths, out, title):
    """Plot val_bpb against tokens and time for runs or experiments (a band over seeds)."""
    from kennethlm_core.plots import plot_paths  # imports torch: not at the top, for `klm --help`

    for path in paths:
        if not path.is_dir():
            raise KLMError(f"{path} is not a folder; give run or experiment folders")
    out = out or (paths[0] if len(paths) == 1 else Path(".")) / "trajectories.png"
    click.echo(f"written to {plot_paths(list(paths), out, title)}")
