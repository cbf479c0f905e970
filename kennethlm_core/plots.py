"""Trajectories: val_bpb against training tokens and against training time, a band over seeds.

Runs are grouped for the plot: the ``seed-<s>`` folders under one folder (an arm of an
experiment) form one group, drawn as the mean over seeds with a band of one standard
deviation; any other run is a group of its own. A run that started from another run's
checkpoint (a branch of a comparison) has its starting point marked.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from kennethlm_core.errors import KLMError
from kennethlm_core.rundir import read_metrics
from kennethlm_core.sweeptable import kilobytes

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def run_groups(paths: list[str | Path]) -> dict[str, list[Path]]:
    """{label: run folders}: each path is a run folder or a folder with runs below it."""
    groups: dict[str, list[Path]] = {}
    for given in map(Path, paths):
        if (given / "metrics.jsonl").exists():
            runs = [given]
        else:
            runs = sorted(m.parent for m in given.rglob("metrics.jsonl"))
        if not runs:
            raise KLMError(f"{given}: no runs there (no metrics.jsonl in it or below it)")
        for run in runs:
            member = run.name.startswith("seed-")
            label = (run.parent if member else run).name
            if len(paths) > 1 and run != given and run.parent != given:
                label = f"{given.name}/{label}"
            groups.setdefault(label, []).append(run)
    return groups


def plot_paths(paths: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Draw the runs found under ``paths`` into ``out`` (a PNG). An experiment folder's
    summary.json gives the title: the verdict and its numbers."""
    groups = run_groups(paths)
    s = experiment_summary(Path(paths[0])) if len(paths) == 1 else None
    if s is None:
        return plot_groups(groups, out, title or "")
    groups = {f"{arm}: {s[arm]}" if arm in s else arm: runs for arm, runs in groups.items()}
    return plot_groups(groups, out, experiment_title(s) if title is None else title)


def experiment_summary(folder: Path) -> dict | None:
    """The summary.json of an experiment folder (klm compare), if it is one."""
    path = folder / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    return s if "verdict" in s else None


def experiment_title(s: dict) -> str:
    lo, hi = s["delta_ci"]
    metric = "val_bpb" if s["metric"] == "bpb" else s["metric"]
    return (
        f"{s['candidate']} vs {s['baseline']} ({len(s['seeds'])} seeds): Δ {metric} "
        f"{s['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}], p = {s['p']:.2g}: {s['verdict']}"
    )


def plot_groups(groups: dict[str, list[Path]], out: str | Path, title: str = "") -> Path:
    import matplotlib  # heavy: imported when drawing, not with the module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): drawing to files
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, layout="constrained")
    low, high = [], []
    for i, (label, runs) in enumerate(groups.items()):
        color = COLORS[i % len(COLORS)]
        tables = [{r["step"]: r for r in read_metrics(run)} for run in runs]
        start = branch_step(runs)  # before it, a branch's metrics are its source's: not drawn
        steps = sorted(s for s in set.intersection(*(set(t) for t in tables)) if s >= (start or 0))
        if not steps:
            raise KLMError(f"the runs of {label} have no evaluation step in common")
        vals = np.array([[t[s]["val_bpb"] for s in steps] for t in tables])
        tokens = np.array([tables[0][s]["tokens"] for s in steps])
        seconds = np.array([[t[s]["train_time_s"] for s in steps] for t in tables]).mean(axis=0)
        mean = vals.mean(axis=0)
        std = vals.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
        name = f"{label} ({len(runs)} seeds)" if len(runs) > 1 else label
        for ax, x in zip(axes, (tokens, seconds), strict=True):
            ax.plot(x, mean, color=color, lw=1.8, marker="o", ms=3, label=name)
            if len(runs) > 1:
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        if start is not None:
            for ax, x in zip(axes, (tokens[0], seconds[0]), strict=True):
                ax.axvline(x, color=color, ls=":", lw=1.2)
                ax.annotate(
                    "branch point",
                    (x, 0.98),
                    xycoords=("data", "axes fraction"),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="top",
                    fontsize=8,
                    color=color,
                )
        later = np.array(steps) > 0  # the untrained model's ~8 bits would flatten the rest
        if later.any():
            low.append((mean - std)[later].min())
            high.append((mean + std)[later].max())
    if low:
        pad = 0.05 * (max(high) - min(low) or 1.0)
        axes[0].set_ylim(min(low) - pad, max(high) + pad)
    axes[0].set_xlabel("training tokens")
    axes[0].xaxis.set_major_formatter(EngFormatter(sep=""))
    axes[1].set_xlabel("training time (s)")
    axes[0].set_ylabel("val_bpb (fixed validation slice)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False)
    band = " · band: ±1 sd over seeds" if any(len(r) > 1 for r in groups.values()) else ""
    fig.suptitle((title + "\n" if title else "") + f"val_bpb during training{band}", fontsize=10)
    return _save(fig, out)


def branch_step(runs: list[Path]) -> int | None:
    """The step a group's runs started at, when they started from another run's checkpoint."""
    for run in runs:
        path = run / "summary.json"
        if path.exists():
            start = json.loads(path.read_text()).get("init_from")
            if start:
                return start["step"]
    return None


def plot_ladder(summary: dict, out: str | Path) -> Path:
    """The ladder (klm ladder): final val_bpb per step (mean, ±1 sd over seeds) on the left,
    each step's val_bpb during training on the right."""
    import matplotlib  # heavy: imported when drawing, not with the module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): drawing to files
    from matplotlib.ticker import EngFormatter

    rows = summary["steps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    x = np.arange(len(rows))
    means = np.array([r["mean"] for r in rows])
    stds = np.array([r["std"] for r in rows])
    left.errorbar(x, means, yerr=stds, color=COLORS[0], marker="o", ms=5, lw=1.8, capsize=3)
    for i, r in enumerate(rows):
        left.annotate(
            f"{r['mean']:.3f}", (i, r["mean"]), xytext=(0, 7), textcoords="offset points",
            ha="center", fontsize=7,
        )  # fmt: skip
    left.set_xticks(x, [r["step"] for r in rows], rotation=35, ha="right")
    left.set_ylabel("final val_bpb (lower is better)")
    left.grid(alpha=0.3)

    cmap = plt.get_cmap("viridis")
    finals = []
    for i, r in enumerate(rows):
        tables = [{m["step"]: m for m in read_metrics(run)} for run in r["runs"]]
        steps = sorted(s for s in set.intersection(*(set(t) for t in tables)) if s > 0)
        if not steps:
            continue
        seeds = np.array([[t[s]["val_bpb"] for s in steps] for t in tables])
        vals = seeds.mean(axis=0)
        tokens = [tables[0][s]["tokens"] for s in steps]
        color = cmap(i / max(1, len(rows) - 1))
        right.plot(tokens, vals, color=color, lw=1.5, marker="o", ms=2.5, label=r["step"])
        if len(tables) > 1:  # the band over seeds, as the left panel's bars
            std = seeds.std(axis=0, ddof=1)
            right.fill_between(tokens, vals - std, vals + std, color=color, alpha=0.15, lw=0)
        finals.append(vals)
    if finals:
        low = min(v.min() for v in finals)
        high = max(v[min(1, len(v) - 1) :].max() for v in finals)  # skip the first evaluation
        pad = 0.05 * (high - low or 1.0)
        right.set_ylim(low - pad, high + pad)
    right.set_xlabel("training tokens")
    right.xaxis.set_major_formatter(EngFormatter(sep=""))
    right.set_ylabel("val_bpb (fixed validation slice)")
    right.grid(alpha=0.3)
    right.legend(frameon=False, fontsize=7, ncol=2)
    budget = ", ".join(f"{v:g} {k}" for k, v in summary["budget"].items())
    seeds = len(summary["seeds"])
    band = " (mean ± 1 sd over seeds)" if seeds > 1 else ""
    fig.suptitle(
        f"Building GPT step by step: {budget}, {seeds} seed{'s' * (seeds > 1)} per step{band}",
        fontsize=10,
    )
    return _save(fig, out)


def plot_sweep(summary: dict, out: str | Path) -> Path:
    """A sweep (klm sweep): final val_bpb against the swept value ``summary["x"]``, one line
    per series of the other grid keys, each point the mean over seeds with a band (and bar)
    of ±1 sd. Skipped cells and cells without a finished seed leave a gap; a series with no
    point at all is left out. Along vocab_size a point sits at the vocabulary the tokenizer
    really has (char stops at the characters it saw)."""
    import matplotlib  # heavy: imported when drawing, not with the module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): drawing to files

    x, cells = summary["x"], summary["cells"]
    others = [k for k in summary["grid"] if k != x]
    xs: list = []  # the swept values, typed, in grid order (cells come in grid order)
    for row in cells:
        if row["cell"][x] not in xs:
            xs.append(row["cell"][x])
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs)

    def position(row) -> float:
        if x == "vocab_size" and row.get("vocab_size"):
            return float(row["vocab_size"])
        return float(row["cell"][x]) if numeric else float(xs.index(row["cell"][x]))

    series: dict[str, list] = {}
    for row in cells:
        name = " ".join(f"{k}={row['texts'][k]}" for k in others) or "val_bpb"
        series.setdefault(name, [])
        if row.get("values"):
            series[name].append((position(row), row["mean"], row["std"], len(row["values"])))

    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    ticks: set[float] = set()
    for i, (name, points) in enumerate(p for p in series.items() if p[1]):
        color = COLORS[i % len(COLORS)]
        pos, mean, std, n = (np.array(v) for v in zip(*sorted(points), strict=True))
        ticks.update(pos.tolist())
        label = f"{name} ({n.max()} seeds)" if n.max() > 1 else name
        # categories (a mix, a tokenizer name) have no order between them: points, no line
        ax.errorbar(pos, mean, yerr=std, color=color, marker="o", ms=4, lw=1.8 if numeric else 0,
                    elinewidth=1.8, capsize=3, label=label)  # fmt: skip
        if n.max() > 1 and numeric:
            ax.fill_between(pos, mean - std, mean + std, color=color, alpha=0.2, lw=0)
    pos = np.array(sorted(ticks))
    if numeric and len(pos) and (pos > 0).all() and pos.max() / pos.min() >= 8:
        ax.set_xscale("log", base=2 if all(v.is_integer() for v in pos) else 10)
    if numeric:
        ax.set_xticks(pos, [f"{v:g}" for v in pos])
    else:
        ax.set_xticks(range(len(xs)), [wrap(str(v)) for v in summary["grid"][x]], fontsize=8)
        ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.minorticks_off()
    ax.set_xlabel(x)
    ax.set_ylabel("final val_bpb (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    budget = summary["budget_text"]
    seeds = len(summary["seeds"])
    band = " (mean ± 1 sd over seeds)" if seeds > 1 else ""
    failed = sum(r["status"] == "failed" for r in cells)
    skipped = f"; {summary['skipped']} cells skipped" if summary.get("skipped") else ""
    skipped += f"; {failed} failed" if failed else ""
    ax.set_title(
        f"val_bpb against {x}: {budget}, {seeds} seed{'s' * (seeds > 1)}{band}\n{skipped[2:]}"
        if skipped
        else f"val_bpb against {x}: {budget}, {seeds} seed{'s' * (seeds > 1)}{band}",
        fontsize=10,
    )
    return _save(fig, out)


def plot_sweep_domains(summary: dict, out: str | Path) -> Path:
    """A sweep's val_bpb per scored domain as a heatmap: a row per cell with a finished seed,
    a column per domain, each square the mean over seeds (its value written in it). Read
    along a row for where one setting is strong and weak; along a column for which setting
    suits a domain. A transfer matrix when the cells train on one domain each."""
    import matplotlib  # heavy: imported when drawing, not with the module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): drawing to files

    rows = [r for r in summary["cells"] if r.get("by_domain")]
    names = list(rows[0]["by_domain"]) if rows else []
    values = np.array([[r["by_domain"][d][0] for d in names] for r in rows]).reshape(len(rows), -1)
    labels = [wrap(r["label"]) for r in rows]
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    fig, ax = plt.subplots(
        figsize=(1.6 + 0.95 * max(1, len(names)), 1.8 + (0.3 + 0.12 * lines) * max(1, len(rows))),
        layout="constrained",
    )
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    middle = (np.nanmin(values) + np.nanmax(values)) / 2 if values.size else 0
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="white" if v > middle else "black")  # fmt: skip
    scored = summary.get("domain_bytes", {})
    ticks = [f"{d} ({kilobytes(scored[d])})" if d in scored else d for d in names]
    ax.set_xticks(range(len(names)), ticks, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel("scored on (validation bytes of the domain)")
    fig.colorbar(image, ax=ax, label="val_bpb (lower is better)")
    seeds = len(summary["seeds"])
    ax.set_title(f"val_bpb per domain: {summary['budget_text']}, mean of {seeds} "
                 f"seed{'s' * (seeds > 1)}", fontsize=10)  # fmt: skip
    return _save(fig, out)


def wrap(label: str, width: int = 32) -> str:
    """A long setting (a mix with a weight per domain) as lines of at most ``width`` characters,
    broken after its commas, so that tick labels do not run into each other."""
    lines = textwrap.wrap(label.replace(",", ", "), width, break_long_words=False,
                          break_on_hyphens=False)  # fmt: skip
    return "\n".join(lines).replace(", ", ",")


def _save(fig, out: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``out`` (its folder made if missing) and free it."""
    import matplotlib.pyplot as plt  # imported when drawing, not with the command line

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
