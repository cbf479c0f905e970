"""The ladder: from a bigram table to a GPT, one change at a time, each step measured.

The steps follow Karpathy's "Let's build GPT: from scratch, in code, spelled out". Each step is
settings (RunConfig fields) that change the step before it, so the configuration of step i is the
base recipe, then the settings shared by every step (``klm ladder --corpus ...``), then the
changes of steps 0..i. Every step trains on the same seeds, the same data and the same budget;
the block size and batch size never change, so every step sees the same tokens.

A ladder folder::

    <step>/seed-<s>/    a complete klm run folder per step and seed
    logs/               output of runs trained in subprocesses (jobs > 1)
    summary.json        per step: the change, the settings, val_bpb per seed, mean, std, params
    ladder.png          final val_bpb per step, and the trajectories

Running the same ladder again reuses finished runs and resumes interrupted ones: the steps
are trained by the runner of ``klm sweep`` (jobs.run_points, on the machinery of ``klm
compare``: Job, run_state, run_jobs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kennethlm_core import runlock
from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.config import BUDGET_KEYS, RunConfig, build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.experiment import describe_budget, folder_name, mean_std
from kennethlm_core.jobs import prepare_points, provenance_overrides, run_points, with_resolved_mix
from kennethlm_core.plots import plot_ladder


@dataclass(frozen=True)
class Step:
    name: str  # a folder name: lowercase words and dashes
    change: str  # what this step adds, in words
    settings: dict[str, Any]  # RunConfig settings on top of the step before, kept after it
    only: dict[str, Any] = field(default_factory=dict)  # for this step alone, not carried on


LADDER: tuple[Step, ...] = (
    # next-token logits read from a table row per token: no context at all. A table of logits
    # needs large steps: at the recipe's lr of 1e-3 it hardly moves in 600 steps (val_bpb 8.27
    # on the real corpus, against 3.7 at 0.1), so this step alone trains with lr 0.1.
    Step("bigram", "a next-token table, no context", {"model": "bigram"}, only={"lr": 0.1}),
    # token and position embeddings, y_t = mean of the values up to t, a linear read-out
    Step(
        "mean",
        "embeddings + the mean of the past",
        {"model": "gpt", "n_layer": 1, "n_head": 1, "attention": "mean", "mlp": "none"}
        | {"norm": "none", "residual": False},
    ),
    # the weights of the average come from queries and keys: softmax(q k^T / sqrt(d))
    Step("one-head", "one self-attention head", {"attention": "naive"}),
    # four heads of a quarter of the width each, side by side
    Step("four-heads", "four heads", {"n_head": 4}),
    # a GELU MLP after attention: each position thinks about what it gathered
    Step("feed-forward", "+ feed-forward (MLP)", {"mlp": "gelu"}),
    # attention + MLP stacked four times, still without residual connections
    Step("four-blocks", "four blocks, stacked", {"n_layer": 4}),
    # x + attn(x), x + mlp(x): a clean path for gradients through the depth
    Step("residual", "+ residual connections", {"residual": True}),
    # LayerNorm before each sublayer and before the read-out (pre-norm, GPT-2)
    Step("layernorm", "+ layer norm", {"norm": "layernorm"}),
    # dropout on attention weights, sublayer outputs and embeddings
    Step("dropout", "+ dropout 0.2", {"dropout": 0.2}),
    # deeper and wider; context and batch stay, so the tokens seen stay the same
    Step("scaled-up", "6 blocks, 6 heads, width 192", {"n_layer": 6, "n_head": 6, "n_embd": 192}),
)

BASE_RECIPE = "baseline"


def step_overrides(steps: tuple[Step, ...] = LADDER) -> list[dict[str, Any]]:
    """The settings of every step: the changes of the steps up to it, merged in order."""
    known = {f.name for f in fields(RunConfig)}
    merged: dict[str, Any] = {}
    out = []
    for step in steps:
        given = {**step.settings, **step.only}
        if unknown := sorted(set(given) - known):
            raise ConfigError(f"ladder step {step.name}: {', '.join(unknown)} is not a setting")
        if any(k in given for k in (*BUDGET_KEYS, "seed")):
            raise ConfigError(f"ladder step {step.name}: the budget and seed are shared")
        merged = {**merged, **step.settings}
        out.append({**merged, **step.only})
    return out


def step_configs(
    shared: dict[str, Any],
    registry: Any,
    recipe: str = BASE_RECIPE,
    steps: tuple[Step, ...] = LADDER,
) -> list[RunConfig]:
    """The resolved configuration of every step (before the seed is set).

    Precedence, lowest first: the recipe, the shared settings, the steps' changes.
    """
    if not any(k in shared for k in BUDGET_KEYS):
        raise ConfigError("the ladder needs a budget: --steps, --tokens or --time")
    return [
        resolve(build_config(recipe, {**shared, **changes}), registry)
        for changes in step_overrides(steps)
    ]


def default_folder(shared: dict[str, Any], root: Path = Path("experiments")) -> Path:
    """experiments/ladder-<budget>[-<shared settings>], named like klm compare's folders."""
    budget = {k: v for k, v in shared.items() if k in BUDGET_KEYS}
    parts = ["ladder", describe_budget(budget)]
    parts += [f"{k} {v}" for k, v in sorted(shared.items()) if k not in BUDGET_KEYS]
    return root / folder_name(parts)


def run_ladder(
    shared: dict[str, Any],
    folder: Path,
    *,
    registry: Any,
    seeds: list[int],
    recipe: str = BASE_RECIPE,
    steps: tuple[Step, ...] = LADDER,
    jobs: int = 1,
    force: bool = False,
    allow_changes: bool = False,
    disabled: list[str] | None = None,
    say: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Train (or reuse) every step on every seed; write summary.json and ladder.png. The runs
    are trained by the runner of ``klm sweep`` (jobs.run_points): a run is reused or resumed
    when its configuration, code and data are what would run now (``allow_changes``: anyway;
    ``force``: trained again), and every run gets one precision. The folder is locked while
    it runs (runlock.py)."""
    cfgs = step_configs(shared, registry, recipe, steps)
    with runlock.hold(folder, "running this ladder"):
        prepared = prepare_points(cfgs, registry, say)  # once, before parallel runs need it
        cfgs = [with_resolved_mix(cfg, data) for cfg, data in zip(cfgs, prepared, strict=True)]
        by_step, _ = run_points(
            [(step.name, cfg) for step, cfg in zip(steps, cfgs, strict=True)],
            folder,
            seeds=seeds,
            registry=registry,
            jobs=jobs,
            force=force,
            allow_changes=allow_changes,
            disabled=disabled,
            say=say,
            again="klm ladder",
            vocab_size=prepared[-1].tokenizer.vocab_size,
            probe=cfgs[-1],  # the precision of the GPT the ladder arrives at
        )
        return ladder_summary(shared, folder, cfgs, by_step, seeds, recipe, steps)


def ladder_summary(shared, folder, cfgs, by_step, seeds, recipe, steps) -> dict[str, Any]:
    """Each step's numbers from its runs; written to summary.json and drawn in ladder.png."""
    plan = [job for jobs in by_step.values() for job in jobs]
    rows, previous = [], None
    for step, changes in zip(steps, step_overrides(steps), strict=True):
        runs = [j.out for j in plan if j.arm == step.name]
        summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
        values = [s["val_bpb"] for s in summaries]
        mean, std = mean_std(values)
        rows.append(
            {
                "step": step.name,
                "change": step.change,
                "settings": {**shared, **changes},
                "values": values,
                "mean": mean,
                "std": std,
                "delta": None if previous is None else mean - previous,
                "params": summaries[0]["params"],
                # the mean over seeds: under a time budget every seed reaches its own count
                "tokens_seen": round(mean_std([s["tokens_seen"] for s in summaries])[0]),
                "tokens_per_s": mean_std([s["tokens_per_s"] for s in summaries])[0],
                "train_time_s": mean_std([s["train_time_s"] for s in summaries])[0],
                "runs": [str(r) for r in runs],
            }
        )
        previous = mean
    first = json.loads((plan[0].out / "summary.json").read_text())
    summary = {
        "name": folder.name,
        "recipe": recipe,
        "shared_settings": {k: v for k, v in shared.items() if k not in BUDGET_KEYS},
        "budget": {k: cfgs[0].get(k) for k in BUDGET_KEYS if cfgs[0].get(k)},
        "seeds": list(seeds),
        "machine": first["device"],
        "git_commit": first["git_commit"],
        "steps": rows,
        "provenance_overrides": provenance_overrides(by_step),
    }
    atomic_write_json(folder / "summary.json", summary)
    plot_ladder(summary, folder / "ladder.png")
    return summary
