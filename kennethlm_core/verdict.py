"""A comparison's verdict: the decision metric of every run (``metric_values``) and the paired
test that judges the candidate against the baseline seed by seed (``paired_test``):

    better        mean improvement >= min_effect and one-sided paired t-test p < alpha
    worse         one-sided paired t-test in the other direction p < alpha
    inconclusive  anything else

The burden of proof is on the candidate: an improvement must be significant *and* large
enough to matter, while a significant loss of any size counts as worse. ``mean_std`` gives
the mean and spread that comparisons, ladders and sweeps report. Import these names from
``experiment``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kennethlm_core.errors import ConfigError

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
    import numpy as np  # numpy and scipy: imported when testing, not for `klm --help`
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
    from kennethlm_core.evaluate import run_tasks  # imports torch: not at the top, for `klm --help`

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
