"""Comparisons: a candidate against a baseline over seeds, judged by a paired test.

The improvement protocol (DESIGN.md): both arms train on the same seeds, so a seed gives both
the same initial weights (where the shapes agree) and the same batches, with the same step or
token budget. The decision metric (the run's final val_bpb unless ``metric`` names a task
metric of ``klm eval``) is compared seed by seed:

    better        mean improvement >= min_effect and one-sided paired t-test p < alpha
    worse         one-sided paired t-test in the other direction p < alpha
    inconclusive  anything else

The burden of proof is on the candidate: an improvement must be significant *and* large
enough to matter, while a significant loss of any size counts as worse.

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

``run_points`` trains named configurations on seeds the same way, each in
``<folder>/<name>/seed-<s>``: the runner of ``klm sweep`` (sweep.py) and ``klm ladder``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from kennethlm_core import runlock
from kennethlm_core.config import (
    BUDGET_KEYS,
    WATCHING,
    RunConfig,
    build_config,
    logger_components,
    resolve,
)
from kennethlm_core.errors import ConfigError, DataError, KLMError
from kennethlm_core.jobs import Job, run_jobs, run_state

# isort: split
# The runner moved to jobs.py; kept importable from here for code written before the move.
from kennethlm_core.jobs import (  # noqa: F401
    execute,
    prepare_points,
    provenance_overrides,
    run_points,
    with_resolved_mix,
)

ARMS = ("baseline", "candidate")
ALPHA = 0.01
# The standard comparison budget and the smallest improvement worth accepting, chosen from the
# noise floor (benchmarks/noise_floor.py, docs/protocol.md "Noise floor"): on
# ../shared/data/corpus the record recipe's final val_bpb has a std over 5 seeds of 0.0095 at
# 600 steps and 0.0079 at 2000 steps, so a longer budget buys little certainty; an accepted
# improvement must be at least about one seed-to-seed standard deviation.
STANDARD_STEPS = 600
MIN_EFFECT = 0.01
# Paired differences whose spread is below this (relative to their size) count as exactly
# constant: see paired_test.
ZERO_SPREAD = 1e-12


# -- statistics ------------------------------------------------------------------------------


def paired_test(
    baseline: list[float],
    candidate: list[float],
    *,
    higher_is_better: bool = False,
    min_effect: float = MIN_EFFECT,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Compare per-seed values of two arms (same seeds, same order) and give the verdict.

    ``delta`` is candidate minus baseline in the metric's units (for bpb a negative delta is an
    improvement), with a 95% paired t interval. ``p_better`` and ``p_worse`` are the one-sided
    paired t-test p-values for "the candidate is better" and "is worse"; ``p`` is the one in the
    direction of the observed mean.

    Zero variance: when every seed shows the same difference the t statistic is c/0. We take
    its limit: a constant nonzero difference is certain in its direction (p = 0 that way, 1 the
    other), with the interval [c, c]; identical arms (c = 0) give p = 1 both ways. The verdict
    rules then apply unchanged, so a constant improvement smaller than min_effect is still
    inconclusive.
    """
    import numpy as np
    from scipy import stats

    b, c = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if b.shape != c.shape or b.ndim != 1:
        raise ConfigError("paired_test needs one value per seed for each arm, in the same order")
    if len(b) < 2:
        raise ConfigError("a paired test needs at least 2 seeds; use --seeds 5")
    diff = c - b
    n, mean, sd = len(diff), float(diff.mean()), float(diff.std(ddof=1))
    sign = 1.0 if higher_is_better else -1.0  # improvement = sign * delta
    gain = sign * mean
    if sd <= ZERO_SPREAD * max(1.0, abs(mean)):
        ci = (mean, mean)
        p_better = 0.0 if gain > 0 else 1.0
        p_worse = 0.0 if gain < 0 else 1.0
    else:
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        ci = (mean - half, mean + half)
        better, worse = ("greater", "less") if higher_is_better else ("less", "greater")
        p_better = float(stats.ttest_rel(c, b, alternative=better).pvalue)
        p_worse = float(stats.ttest_rel(c, b, alternative=worse).pvalue)
    if gain >= min_effect - 1e-12 and p_better < alpha:  # 1e-12: "at least", despite rounding
        verdict = "better"
    elif p_worse < alpha:
        verdict = "worse"
    else:
        verdict = "inconclusive"
    return {
        "n": n,
        "delta": mean,
        "delta_std": sd,
        "delta_ci": [ci[0], ci[1]],
        "improvement": gain,
        "p": p_better if gain >= 0 else p_worse,
        "p_better": p_better,
        "p_worse": p_worse,
        "min_effect": min_effect,
        "alpha": alpha,
        "verdict": verdict,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


# -- what is compared ------------------------------------------------------------------------


@dataclass
class Arm:
    """One side of a comparison: a recipe and/or run settings, and the text they came from."""

    text: str
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    baseline: Arm
    candidate: Arm  # with no recipe of its own: settings applied on top of the baseline
    shared: dict[str, Any] = field(default_factory=dict)  # settings of both arms, budget too
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    metric: str = "bpb"
    metric_data: str | None = None
    min_effect: float = MIN_EFFECT
    alpha: float = ALPHA
    branch_at: float | None = None  # candidate starts from the baseline's checkpoint there
    init_from: Path | None = None  # both arms start from this run's checkpoint
    logger: str | None = None  # the runs' loggers (None: the arms'), grouped by the folder

    def budget(self) -> dict[str, Any]:
        return {k: self.shared[k] for k in BUDGET_KEYS if k in self.shared}

    def settings(self) -> dict[str, Any]:
        """The shared settings other than the budget."""
        return {k: v for k, v in self.shared.items() if k not in BUDGET_KEYS}


def arm_configs(comp: Comparison, registry: Any) -> dict[str, RunConfig]:
    """The resolved configuration of each arm (before the seed is set).

    Precedence, lowest first: the arm's recipe, the shared settings, the arm's own settings;
    a candidate without a recipe of its own adds its settings to the baseline's.
    """
    for arm_name, arm in zip(ARMS, (comp.baseline, comp.candidate), strict=True):
        fixed = sorted({*BUDGET_KEYS, "seed"} & set(arm.overrides))
        if fixed:
            raise ConfigError(
                f"--{arm_name} sets {', '.join(fixed)}; the budget and the seeds belong to the "
                "comparison (give --steps, --tokens or --time and --seeds to klm compare)"
            )
    if not any(k in comp.shared for k in BUDGET_KEYS):
        raise ConfigError("a comparison needs a budget: --steps, --tokens or --time")
    base, cand = comp.baseline, comp.candidate
    baseline = build_config(base.recipe, {**comp.shared, **base.overrides})
    if cand.recipe:
        candidate = build_config(cand.recipe, {**comp.shared, **cand.overrides})
    else:
        candidate = build_config(base.recipe, {**comp.shared, **base.overrides, **cand.overrides})
    cfgs = {"baseline": resolve(baseline, registry), "candidate": resolve(candidate, registry)}
    if comp.logger:  # an unknown logger fails now, before any run
        logger_components(cfgs["baseline"].replace(logger=comp.logger), registry)
    sized = [arm for arm, cfg in cfgs.items() if cfg.size == "auto"]
    if sized:
        raise ConfigError(
            f"the {' and '.join(sized)} arm asks for --size auto, which chooses a shape for one "
            "klm run; a comparison trains fixed shapes: give --n-layer, --n-embd and --n-head "
            "(klm run --size auto says which it would choose)"
        )
    if _computed(cfgs["baseline"]) == _computed(cfgs["candidate"]):
        raise ConfigError(
            f"the candidate ({cand.text!r}) is the same configuration as the baseline; "
            "give it a change, for example --candidate '--posemb none'"
        )
    return cfgs


def candidate_settings(cfgs: dict[str, RunConfig]) -> dict[str, Any]:
    """What the candidate changes: its settings that differ from the baseline's."""
    base, cand = _computed(cfgs["baseline"]), _computed(cfgs["candidate"])
    return {k: v for k, v in cand.items() if base.get(k) != v}


def _computed(cfg: RunConfig) -> dict[str, Any]:
    """The settings that change what a run computes: all but how it is watched (loggers)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in WATCHING}


def default_folder(comp: Comparison, root: Path = Path("experiments")) -> Path:
    """experiments/<baseline>-vs-<candidate>-<budget>[-branch...][-<shared settings>]."""
    parts = [comp.baseline.text or "defaults", "vs", comp.candidate.text]
    parts.append(describe_budget(comp.budget()))
    if comp.branch_at is not None:
        parts.append(f"branch {comp.branch_at:g}")
    if comp.init_from is not None:
        parts.append(f"from {Path(comp.init_from).name}")
    parts += [f"{k} {v}" for k, v in sorted(comp.settings().items())]
    return root / folder_name(parts)


def folder_name(parts: list[str]) -> str:
    """A folder name from words: lowercase, dashes, dots only in numbers; a long name is cut
    and ends in a hash of the whole, so different experiments never share one."""
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", " ".join(parts).lower())
    slug = re.sub(r"[^a-z0-9.]+", "-", text).strip("-")
    if len(slug) > 100:
        slug = slug[:90].rstrip("-") + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]
    return slug


def describe_budget(budget: dict[str, Any]) -> str:
    from kennethlm_core.config import parse_count, parse_duration

    if budget.get("steps"):
        return f"{parse_count(budget['steps'])} steps"
    if budget.get("tokens"):
        return f"{parse_count(budget['tokens']):,} tokens"
    return f"{parse_duration(budget['time']):g}s"


def total_steps(cfg: RunConfig) -> int:
    if cfg.steps:
        return cfg.steps
    if cfg.tokens:
        return math.ceil(cfg.tokens / (cfg.batch_size * cfg.block_size))
    raise ConfigError("--branch-at needs a step or token budget, not --time")


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
    from kennethlm_core.checkpoint import read_checkpoint
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.provenance import planned_provenance
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


# -- the decision metric ---------------------------------------------------------------------


def check_metric(metric: str, registry: Any) -> None:
    """Fail before training when the metric's task is unknown."""
    if metric != "bpb":
        registry.get("task", metric.partition("/")[0])


def metric_values(
    runs: list[Path], metric: str, registry: Any, data: str | None = None
) -> tuple[list[float], bool]:
    """(value per run, higher_is_better). ``bpb``: the summary's val_bpb; else TASK/METRIC,
    evaluated with the task runner unless the run's eval.json has it (and no data is given)."""
    if metric == "bpb":
        return [json.loads((r / "summary.json").read_text())["val_bpb"] for r in runs], False
    from kennethlm_core.evaluate import run_tasks

    task, _, name = metric.partition("/")
    values, higher = [], True
    for run in runs:
        path = run / "eval.json"
        cached = json.loads(path.read_text()) if path.exists() else {}
        result = cached.get(task) if data is None else None
        if result is None:
            result = run_tasks(run, [task], data=data, registry=registry)[task]
        metrics = result["metrics"]
        key = next((k for k in (metric, name, task) if k in metrics), None)
        if key is None and not name and len(metrics) == 1:
            key = next(iter(metrics))
        if key is None:
            raise ConfigError(
                f"task '{task}' reports {', '.join(metrics)}, not '{metric}'; "
                f"use --metric {task}/{next(iter(metrics), 'METRIC')}"
            )
        values.append(float(metrics[key]["value"]))
        higher = bool(metrics[key].get("higher_is_better", True))
    return values, higher


# -- the secondary metric and the machine's load ---------------------------------------------

# klm compare --record also scores every run of both arms on this task and records its
# metrics beside the verdict, which they never decide: bits per byte of the reference summary
# (the number that moves for small models) and chrF++ of greedy summaries.
SECONDARY_TASK = "summarization"
SECONDARY_METRICS = ("bpb", "chrf++")
# Articles per run: the task's own default, as `klm eval --task summarization` scores. On two
# busy CPU cores a ~1M-parameter run takes 0.3 s when its summaries end at a line break, 5 s
# when all 20 run to the 128-token cap: at most about 25 s for five seeds of an arm.
SECONDARY_LIMIT = 20


@dataclass
class SecondaryMetric:
    """A task scored on every run of both arms and recorded beside the verdict."""

    task: str = SECONDARY_TASK
    data: str | None = None  # as klm eval --data; None: the task's own data (its hub set)
    limit: int = SECONDARY_LIMIT
    metrics: tuple[str, ...] = SECONDARY_METRICS

    @property
    def key(self) -> str:
        """Its results' key in a run's eval.json, apart from ``klm eval``'s own."""
        return f"{self.task} (secondary)"

    def source(self) -> dict[str, Any]:
        """What its results depend on besides the run: a cached result must match."""
        return {"data": str(Path(self.data).resolve()) if self.data else None, "limit": self.limit}


def check_secondary(sec: SecondaryMetric, cfg: RunConfig, registry: Any) -> int:
    """Fail before training when the secondary metric cannot run: a dry run of the task on a
    fixture model (fixtures.ScriptedModel, no training needed), which loads the task's data
    (the local path, or its hub set) and scores it. Returns the examples scored per run."""
    from kennethlm_core.evaluate import task_data
    from kennethlm_core.fixtures import ScriptedModel

    try:
        task = registry.get("task", sec.task).factory(cfg)
        data = task_data(task, sec.data, several=False)
        result = task.evaluate(ScriptedModel(block_size=cfg.block_size), data=data, limit=sec.limit)
    except KLMError as e:
        message = " ".join(str(e).split()).replace("--data ", "--secondary-data ")
        raise DataError(
            f"the secondary metric ({sec.task}) cannot be scored: {message}; or give "
            "--secondary-data none to record without it"
        ) from None
    missing = [m for m in sec.metrics if m not in result.metrics]
    if missing:
        raise ConfigError(
            f"task '{sec.task}' reports {', '.join(result.metrics)}, not {', '.join(missing)}"
        )
    return result.n


def secondary_result(
    sec: SecondaryMetric, run: Path, registry: Any, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """The task's result on one run: from the run's eval.json when it was scored there on the
    same data and limit, else scored now (evaluate.run_tasks) and kept there under ``sec.key``
    (the task's own key stays as ``klm eval`` left it)."""
    from kennethlm_core.checkpoint import atomic_write_json
    from kennethlm_core.evaluate import run_tasks

    path = run / "eval.json"
    before = json.loads(path.read_text()) if path.exists() else {}
    cached = before.get(sec.key)
    if cached and cached.get("source") == sec.source():
        return cached
    say(f"{run}: scoring {sec.task} (secondary metric, {sec.limit} examples)")
    result = run_tasks(
        run, [sec.task], data=sec.data, limit=sec.limit, registry=registry, save=False
    )
    result = {**result[sec.task], "source": sec.source()}
    atomic_write_json(path, {**before, sec.key: result})
    return result


def secondary_values(
    sec: SecondaryMetric,
    runs: dict[str, list[Path]],
    registry: Any,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """summary.json's ``secondary``: per metric the value of every run of each arm.

    Scored on one torch thread: greedy generation from a small model is a long row of tiny
    forward passes, which two threads on a busy machine make 10 to 30 times slower (measured:
    a ~1M-parameter run's 20 summaries of 128 tokens took 5 s on one thread, 124-160 s on two
    at a load of 5 on two cores)."""
    import torch

    metrics: dict[str, dict[str, Any]] = {m: {arm: [] for arm in ARMS} for m in sec.metrics}
    ns = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arm in ARMS:
            for run in runs[arm]:
                result = secondary_result(sec, Path(run), registry, say)
                ns.append(int(result["n"]))
                for m in sec.metrics:
                    metrics[m][arm].append(float(result["metrics"][m]["value"]))
                    metrics[m]["higher_is_better"] = bool(
                        result["metrics"][m].get("higher_is_better", True)
                    )
    finally:
        torch.set_num_threads(threads)
    return {"task": sec.task, **sec.source(), "n": min(ns), "metrics": metrics}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_at_start(now: list[float] | None, phases: list[list[Any]], folder: Path):
    """The load average when this comparison's runs started: now, unless every run was
    reused, in which case the previous summary.json's figure (when it has one) still is."""
    previous = folder / "summary.json"
    if all(j.mode == "done" for phase in phases for j in phase) and previous.exists():
        try:
            old = json.loads(previous.read_text()).get("load_avg_start")
        except (OSError, ValueError):
            old = None
        if old:
            return old
    return now


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
    from kennethlm_core import precision
    from kennethlm_core.checkpoint import atomic_write_json
    from kennethlm_core.data import prepare_data
    from kennethlm_core.errors import Interrupted
    from kennethlm_core.plots import plot_paths
    from kennethlm_core.provenance import git_commit, sentence

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
                run_jobs(
                    phase, jobs, registry, disabled=disabled or [], logs=folder / "logs", say=say
                )
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(
            "finished runs are kept and unfinished ones checkpointed; run the same "
            "klm compare again to continue"
        ) from None

    by_arm = {arm: [j for phase in phases for j in phase if j.arm == arm] for arm in ARMS}
    values, higher = {}, False
    for arm in ARMS:
        values[arm], higher = metric_values(
            [j.out for j in by_arm[arm]], comp.metric, registry, comp.metric_data
        )
    result = paired_test(
        values["baseline"],
        values["candidate"],
        higher_is_better=higher,
        min_effect=comp.min_effect,
        alpha=comp.alpha,
    )
    arms = {}
    for arm in ARMS:
        runs = [json.loads((j.out / "summary.json").read_text()) for j in by_arm[arm]]
        mean, std = mean_std(values[arm])
        arms[arm] = {
            "values": values[arm],
            "mean": mean,
            "std": std,
            "train_time_s": mean_std([r["train_time_s"] for r in runs])[0],
            "tokens_per_s": mean_std([r["tokens_per_s"] for r in runs])[0],
            "runs": [str(j.out) for j in by_arm[arm]],
        }
    first = json.loads((by_arm["candidate"][0].out / "summary.json").read_text())
    summary = {
        "name": folder.name,
        "date": date.today().isoformat(),
        "commit": git_commit(),
        "machine": first["device"],
        "baseline": comp.baseline.text,
        "candidate": comp.candidate.text,
        "candidate_settings": candidate_settings(cfgs),
        "shared_settings": comp.settings(),
        "budget": {k: cfgs["baseline"].get(k) for k in BUDGET_KEYS if cfgs["baseline"].get(k)},
        "seeds": list(comp.seeds),
        "metric": comp.metric,
        "higher_is_better": higher,
        "branch_at": comp.branch_at,
        "init_from": str(comp.init_from) if comp.init_from else None,
        "arms": arms,
        "provenance_overrides": [
            {
                "run": str(j.out),
                "use": "reused" if j.mode == "done" else "resumed",
                "changed": j.changes,
            }
            for phase in phases
            for j in phase
            if j.changes
        ],
        **result,
    }
    summary["load_avg_start"] = load_at_start(load_now, phases, folder)
    if secondary is not None:
        runs = {arm: [j.out for j in by_arm[arm]] for arm in ARMS}
        summary["secondary"] = secondary_values(secondary, runs, registry, say)
    atomic_write_json(folder / "summary.json", summary)
    plot_paths([folder], folder / "trajectories.png")
    return summary
