"""A comparison's summary.json: the verdict and each arm's figures (``summarize``), and what is
recorded beside them: a secondary metric, scored on every run and never deciding
(``SecondaryMetric``), and the machine's load when the runs started (``load_at_start``).
Import these names from ``experiment``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.comparison import ARMS, Comparison, candidate_settings
from kennethlm_core.config import BUDGET_KEYS, RunConfig
from kennethlm_core.errors import ConfigError, DataError, KLMError
from kennethlm_core.jobs import provenance_overrides
from kennethlm_core.provenance import git_commit
from kennethlm_core.verdict import mean_std, metric_values, paired_test


def summarize(
    comp: Comparison,
    cfgs: dict[str, RunConfig],
    folder: Path,
    phases: list[list[Any]],
    registry: Any,
) -> dict[str, Any]:
    """summary.json of a comparison whose runs (``phases`` of jobs.Job) are trained: the
    decision metric of every run and the verdict on it (verdict.paired_test), each arm's
    figures, what was compared on which machine, and the runs used although their code or
    data changed."""
    by_arm = {arm: [j.out for phase in phases for j in phase if j.arm == arm] for arm in ARMS}
    values, higher = {}, False
    for arm in ARMS:
        values[arm], higher = metric_values(by_arm[arm], comp.metric, registry, comp.metric_data)
    result = paired_test(
        values["baseline"],
        values["candidate"],
        higher_is_better=higher,
        min_effect=comp.min_effect,
        alpha=comp.alpha,
    )
    first = json.loads((by_arm["candidate"][0] / "summary.json").read_text())
    return {
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
        "arms": {arm: arm_figures(values[arm], by_arm[arm]) for arm in ARMS},
        "provenance_overrides": provenance_overrides(dict(enumerate(phases))),  # in run order
        **result,
    }


def arm_figures(values: list[float], runs: list[Path]) -> dict[str, Any]:
    """One arm's figures: the metric of each run, their mean and std, and the runs' mean
    training time and speed."""
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    mean, std = mean_std(values)
    return {
        "values": values,
        "mean": mean,
        "std": std,
        "train_time_s": mean_std([s["train_time_s"] for s in summaries])[0],
        "tokens_per_s": mean_std([s["tokens_per_s"] for s in summaries])[0],
        "runs": [str(run) for run in runs],
    }


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
    from kennethlm_core.evaluate import task_data  # imports torch: not at the top, for `klm --help`
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
    from kennethlm_core.evaluate import run_tasks  # imports torch: not at the top, for `klm --help`

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
    import torch  # not at the top, for `klm --help`

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
