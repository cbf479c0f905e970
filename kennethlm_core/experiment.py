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

Running the same comparison again reuses finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from kennethlm_core.config import BUDGET_KEYS, RunConfig, build_config, resolve, same_config
from kennethlm_core.errors import ConfigError, KLMError

ARMS = ("baseline", "candidate")
ALPHA = 0.01
# The standard comparison budget and the smallest improvement worth accepting, chosen from the
# noise floor (benchmarks/noise_floor.py, README "Noise floor"): on ../shared/data/corpus the
# record recipe's final val_bpb has a std over 5 seeds of 0.0095 at 600 steps and 0.0079 at
# 2000 steps, so a longer budget buys little certainty; an accepted improvement must be at
# least about one seed-to-seed standard deviation.
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
    if cfgs["baseline"].to_dict() == cfgs["candidate"].to_dict():
        raise ConfigError(
            f"the candidate ({cand.text!r}) is the same configuration as the baseline; "
            "give it a change, for example --candidate '--posemb none'"
        )
    return cfgs


def candidate_settings(cfgs: dict[str, RunConfig]) -> dict[str, Any]:
    """What the candidate changes: its settings that differ from the baseline's."""
    base, cand = cfgs["baseline"].to_dict(), cfgs["candidate"].to_dict()
    return {k: v for k, v in cand.items() if base.get(k) != v}


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


# -- the runs --------------------------------------------------------------------------------


@dataclass
class Job:
    """One run of a comparison: what to train, where, and how to start."""

    arm: str
    seed: int
    cfg: RunConfig
    out: Path
    mode: str = "new"  # new | resume | restart (same configuration, start again) | done
    init_from: Path | None = None
    snapshot_at: int | None = None

    @property
    def label(self) -> str:
        return f"{self.arm} seed {self.seed}"

    def to_json(self, disabled: list[str]) -> str:
        return json.dumps(
            {
                "config": self.cfg.to_dict(),
                "out": str(self.out),
                "mode": self.mode,
                "init_from": str(self.init_from) if self.init_from else None,
                "snapshot_at": self.snapshot_at,
                "disabled": list(disabled),
            }
        )


def run_state(job: Job, init_step: int | None, force: bool) -> str:
    """done, resume, restart or new, from what the run folder holds."""
    from kennethlm_core.checkpoint import CHECKPOINT
    from kennethlm_core.train import snapshot_path

    config = job.out / "config.json"
    if not config.exists():
        return "new"
    if not same_config(json.loads(config.read_text()), job.cfg):
        if force:
            return "restart"
        raise ConfigError(
            f"{job.out} holds a run of another configuration; use --force to replace it, or "
            "--out for a new experiment folder"
        )
    summary = job.out / "summary.json"
    if summary.exists():
        started = (json.loads(summary.read_text()).get("init_from") or {}).get("step")
        snapshot_ok = job.snapshot_at is None or snapshot_path(job.out, job.snapshot_at).exists()
        return "done" if started == init_step and snapshot_ok else "restart"
    return "resume" if (job.out / CHECKPOINT).exists() else "restart"


def plan_jobs(
    comp: Comparison, cfgs: dict[str, RunConfig], folder: Path, *, force: bool, threads: int
) -> list[list[Job]]:
    """The runs in phases: a branching candidate waits for its baseline's snapshot."""
    from kennethlm_core.checkpoint import read_checkpoint
    from kennethlm_core.train import branch_source, snapshot_path

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
            job = Job(arm, seed, cfg, folder / arm / f"seed-{seed}")
            start = init_step
            if comp.init_from is not None:
                job.init_from = Path(comp.init_from)
            elif branch_step and arm == "baseline":
                job.snapshot_at = branch_step
            elif branch_step:
                job.init_from = snapshot_path(folder / "baseline" / f"seed-{seed}", branch_step)
                start = branch_step
            job.mode = run_state(job, start, force)
            phases[1 if branch_step and arm == "candidate" else 0].append(job)
    return phases


def execute(job: Job, registry: Any) -> dict[str, Any]:
    """Train one job in this process."""
    from kennethlm_core.train import train

    return train(
        job.cfg,
        job.out,
        registry=registry,
        resume=job.mode == "resume",
        force=job.mode == "restart",
        init_from=None if job.mode == "resume" else job.init_from,
        snapshot_at=job.snapshot_at,
    )


def run_jobs(
    jobs: list[Job],
    n_jobs: int,
    registry: Any,
    *,
    disabled: list[str],
    logs: Path,
    say: Callable[[str], None],
) -> None:
    """Train the jobs that are not done: in this process, or in up to n_jobs subprocesses."""
    todo = [j for j in jobs if j.mode != "done"]
    for job in jobs:
        if job.mode == "done":
            say(f"{job.label}: finished before, reused")
    if n_jobs <= 1:
        for job in todo:
            say(f"{job.label}: {_starting(job)}")
            say(_finished(job, execute(job, registry)))
        return

    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[Job, subprocess.Popen, Path]] = []
    try:
        while todo or running:
            while todo and len(running) < n_jobs:
                job = todo.pop(0)
                log = logs / f"{job.arm}-seed-{job.seed}.log"
                with open(log, "w", encoding="utf-8") as f:
                    proc = subprocess.Popen(  # its own session: Ctrl-C reaches it through us
                        [sys.executable, "-m", "kennethlm_core.experiment", job.to_json(disabled)],
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                running.append((job, proc, log))
                say(f"{job.label}: {_starting(job)} (log: {log})")
            time.sleep(0.2)
            for item in list(running):
                job, proc, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode != 0:
                    lines = log.read_text(encoding="utf-8").strip().splitlines() or ["no output"]
                    raise KLMError(f"{job.label} failed: {lines[-1]} (see {log})")
                say(_finished(job, json.loads((job.out / "summary.json").read_text())))
    finally:  # on an error or Ctrl-C: let the others checkpoint and stop
        for _job, proc, _log in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # finish the step, checkpoint, exit
        for _job, proc, _log in running:
            proc.wait()


def _starting(job: Job) -> str:
    what = {"new": "training", "restart": "training", "resume": "resuming"}[job.mode]
    if job.init_from is not None and job.mode != "resume":
        what += f" from {job.init_from}"
    return what


def _finished(job: Job, summary: dict[str, Any]) -> str:
    return f"{job.label}: val_bpb {summary['val_bpb']:.4f} in {summary['train_time_s']:.0f}s"


def _worker(argv: list[str]) -> int:
    """`python -m kennethlm_core.experiment JOB_JSON`: train one job (a subprocess of run_jobs)."""
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.train import Interrupted

    spec = json.loads(argv[0])
    try:
        registry = get_registry(spec["disabled"])
        cfg = resolve(RunConfig.from_dict(spec["config"]), registry)
        init = Path(spec["init_from"]) if spec["init_from"] else None
        job = Job("", 0, cfg, Path(spec["out"]), spec["mode"], init, spec["snapshot_at"])
        summary = execute(job, registry)
    except Interrupted as e:
        print(f"klm: stopped: {e}", file=sys.stderr)
        return 130
    except KLMError as e:
        print(f"klm: error: {e}", file=sys.stderr)
        return 2
    print(f"val_bpb {summary['val_bpb']:.4f}")
    return 0


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


# -- a whole comparison ----------------------------------------------------------------------


def run_comparison(
    comp: Comparison,
    folder: Path,
    *,
    registry: Any,
    jobs: int = 1,
    force: bool = False,
    disabled: list[str] | None = None,
    say: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Train (or reuse) every run, score the metric, write summary.json and the plot."""
    from kennethlm_core.checkpoint import atomic_write_json
    from kennethlm_core.data import prepare_data
    from kennethlm_core.plots import plot_paths
    from kennethlm_core.train import Interrupted, git_commit

    check_metric(comp.metric, registry)
    cfgs = arm_configs(comp, registry)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // jobs) if jobs > 1 else 0
    phases = plan_jobs(comp, cfgs, folder, force=force, threads=threads)
    if any(j.mode != "done" for phase in phases for j in phase):
        for cfg in {(c.corpus, c.tokenizer): c for c in cfgs.values()}.values():
            prepare_data(cfg, registry, log=say)  # once, before parallel runs need it
    try:
        for phase in phases:
            run_jobs(phase, jobs, registry, disabled=disabled or [], logs=folder / "logs", say=say)
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
        **result,
    }
    atomic_write_json(folder / "summary.json", summary)
    plot_paths([folder], folder / "trajectories.png")
    return summary


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
