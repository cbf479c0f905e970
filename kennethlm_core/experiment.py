"""Comparisons: a candidate against a baseline over seeds, judged by a paired test.

The improvement protocol (DESIGN.md): both arms train on the same seeds, so a seed gives both
the same initial weights (where the shapes agree) and the same batches, with the same step or
token budget. The decision metric (the run's final val_bpb unless ``metric`` names a task
metric of ``klm eval``) is compared seed by seed, and the candidate is better, worse or
inconclusive by the rules in verdict.py.

An experiment folder::

    baseline/seed-<s>/     one run folder per arm and seed (a complete klm run folder)
    candidate/seed-<s>/
    logs/                  the output of runs trained in subprocesses (jobs > 1)
    summary.json           per-seed values, mean and std per arm, delta with CI, p, verdict
    trajectories.png       val_bpb against tokens and against time (plots.py)

Running the same comparison again reuses finished runs and resumes interrupted ones, if their
code and data (provenance.json, see provenance.py) are what the comparison would run now; a
run whose code or data changed is refused, unless ``allow_changes`` (recorded in summary.json
under ``provenance_overrides``, and for a resumed run in its provenance.json) or ``force``
(trained again).

This module plans a comparison's runs (``plan_jobs``) and runs it (``run_comparison``). What is
compared is in comparison.py (``Arm``, ``Comparison``, ``arm_configs``), the verdict in
verdict.py, summary.json in report.py, and the runner, shared with ``klm sweep`` and ``klm
ladder`` (``run_points``), in jobs.py; every name stays importable from here.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kennethlm_core import runlock
from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.comparison import ARMS, Comparison, arm_configs
from kennethlm_core.config import RunConfig, resolve
from kennethlm_core.errors import ConfigError, Interrupted
from kennethlm_core.jobs import Job, run_jobs, run_state
from kennethlm_core.provenance import planned_provenance, sentence
from kennethlm_core.report import (
    SecondaryMetric,
    check_secondary,
    load_at_start,
    load_average,
    secondary_values,
    summarize,
)
from kennethlm_core.verdict import check_metric

# isort: split
# Moved to modules of their own; kept importable from here for code written before the move.
from kennethlm_core.comparison import (  # noqa: F401
    Arm,
    candidate_settings,
    default_folder,
    describe_budget,
    folder_name,
)
from kennethlm_core.jobs import (  # noqa: F401
    execute,
    prepare_points,
    provenance_overrides,
    run_points,
    with_resolved_mix,
)
from kennethlm_core.report import (  # noqa: F401
    SECONDARY_LIMIT,
    SECONDARY_METRICS,
    SECONDARY_TASK,
    secondary_result,
)
from kennethlm_core.verdict import (  # noqa: F401
    ALPHA,
    MIN_EFFECT,
    STANDARD_STEPS,
    ZERO_SPREAD,
    mean_std,
    metric_values,
    paired_test,
)

# -- planning a comparison's runs ---------------------------------------------------------


def plan_jobs(
    comp: Comparison,
    cfgs: dict[str, RunConfig],
    folder: Path,
    *,
    force: bool,
    threads: int,
    registry: Any = None,
    allow_changes: bool = False,
) -> list[list[Job]]:
    """The runs in phases: a branching candidate waits for its baseline's snapshot.

    A run to reuse or resume is checked against the code and data this comparison would run
    now (run_state)."""
    # not at the top, for `klm --help`: checkpoint, plugins and rundir import torch
    from kennethlm_core.checkpoint import read_checkpoint
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.rundir import branch_source, snapshot_path

    registry = registry or get_registry()
    planned: dict[str, dict[str, Any]] = {}  # per arm: only what the seed does not change

    branch_step = None
    if comp.branch_at is not None:
        if comp.init_from is not None:
            raise ConfigError("give --branch-at or --init-from, not both")
        if not 0 < comp.branch_at < 1:
            raise ConfigError(
                f"--branch-at is a fraction of the budget in (0, 1), got {comp.branch_at}"
            )
        branch_step = max(1, round(comp.branch_at * total_steps(cfgs["baseline"])))
    init_step = None
    if comp.init_from is not None:
        source = branch_source(comp.init_from, cfgs["candidate"])
        branch_source(comp.init_from, cfgs["baseline"])
        init_step = read_checkpoint(source)[1]["step"]

    phases: list[list[Job]] = [[], []] if branch_step else [[]]
    for seed in comp.seeds:
        for arm in ARMS:
            cfg = cfgs[arm].replace(seed=seed, **({"threads": threads} if threads else {}))
            if comp.logger is not None or cfg.logger:  # loggers group the runs (loggers.py)
                logger = cfg.logger if comp.logger is None else comp.logger
                group = cfg.group or folder.name
                cfg = resolve(cfg.replace(logger=logger, group=group, arm=arm), registry)
            job = Job(arm, seed, cfg, folder / arm / f"seed-{seed}", allow_changes=allow_changes)
            start = init_step
            if comp.init_from is not None:
                job.init_from = Path(comp.init_from)
            elif branch_step and arm == "baseline":
                job.snapshot_at = branch_step
            elif branch_step:
                job.init_from = snapshot_path(folder / "baseline" / f"seed-{seed}", branch_step)
                start = branch_step
            if arm not in planned and (job.out / "config.json").exists():
                planned[arm] = planned_provenance(cfg, registry)
            current = planned.get(arm)
            job.mode = run_state(job, start, force, current=current, allow_changes=allow_changes)
            phases[1 if branch_step and arm == "candidate" else 0].append(job)
    return phases


def total_steps(cfg: RunConfig) -> int:
    if cfg.steps:
        return cfg.steps
    if cfg.tokens:
        return math.ceil(cfg.tokens / (cfg.batch_size * cfg.block_size))
    raise ConfigError("--branch-at needs a step or token budget, not --time")


# -- a whole comparison ----------------------------------------------------------------------


def run_comparison(comp: Comparison, folder: Path, **options: Any) -> dict[str, Any]:
    """Run a comparison in ``folder`` (see _run_comparison for the options), holding the
    folder's lock: another process running a comparison there is refused with its pid
    (runlock.py). Its runs are not locked out: each trains in a folder of its own."""
    with runlock.hold(folder, "running this comparison"):
        return _run_comparison(comp, folder, **options)


def _run_comparison(
    comp: Comparison,
    folder: Path,
    *,
    registry: Any,
    jobs: int = 1,
    force: bool = False,
    allow_changes: bool = False,
    disabled: list[str] | None = None,
    say: Callable[[str], None] = lambda msg: None,
    secondary: SecondaryMetric | None = None,
) -> dict[str, Any]:
    """Train (or reuse) every run, score the metric, write summary.json and the plot.

    summary.json keeps the load average at the start (``load_avg_start``, see load_at_start).
    ``secondary``: also score every run on that task (checked before training), recorded in
    summary.json under ``secondary`` (see secondary_values); it does not decide the verdict.

    ``allow_changes``: reuse or resume runs whose code or data changed (see run_state)."""
    from kennethlm_core.plots import plot_paths  # imports torch: not at the top, for `klm --help`

    load_now = load_average()
    check_metric(comp.metric, registry)
    cfgs = arm_configs(comp, registry)
    if secondary is not None:
        check_secondary(secondary, cfgs["baseline"], registry)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // jobs) if jobs > 1 else 0
    phases = plan_jobs(
        comp,
        cfgs,
        folder,
        force=force,
        threads=threads,
        registry=registry,
        allow_changes=allow_changes,
    )
    for job in (j for phase in phases for j in phase if j.changes):
        say(f"{job.label}: {sentence(job.changes)}; used anyway (--allow-changes)")
    train_phases(phases, cfgs, jobs, folder, registry, disabled or [], say)
    summary = summarize(comp, cfgs, folder, phases, registry)
    summary["load_avg_start"] = load_at_start(load_now, phases, folder)
    if secondary is not None:
        runs = {arm: [j.out for phase in phases for j in phase if j.arm == arm] for arm in ARMS}
        summary["secondary"] = secondary_values(secondary, runs, registry, say)
    atomic_write_json(folder / "summary.json", summary)
    plot_paths([folder], folder / "trajectories.png")
    return summary


def train_phases(
    phases: list[list[Job]],
    cfgs: dict[str, RunConfig],
    jobs: int,
    folder: Path,
    registry: Any,
    disabled: list[str],
    say: Callable[[str], None],
) -> None:
    """Train the runs not done yet, phase after phase, ``jobs`` at a time (jobs.run_jobs). The
    data is prepared and the precision chosen first, once, so that runs in parallel share
    them."""
    from kennethlm_core import precision  # torch: imported when runs train, not for klm --help
    from kennethlm_core.data import prepare_data

    decided = contextlib.nullcontext()
    if any(j.mode != "done" for phase in phases for j in phase):
        prepared = {}
        for key, cfg in {(c.corpus, c.tokenizer): c for c in cfgs.values()}.items():
            prepared[key] = prepare_data(cfg, registry, log=say)  # once, before parallel runs
        base = cfgs["baseline"]
        vocab = prepared[base.corpus, base.tokenizer].tokenizer.vocab_size
        decided = precision.one_answer(base, registry, vocab, log=say)
    try:
        with decided:
            for phase in phases:
                run_jobs(phase, jobs, registry, disabled=disabled, logs=folder / "logs", say=say)
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(
            "finished runs are kept and unfinished ones checkpointed; run the same "
            "klm compare again to continue"
        ) from None
