"""The size rule behind `klm run --size auto`: which model size is best for a token budget.

    python benchmarks/size_rule.py [--recipe record] [--corpus ../shared/data/corpus]
        [--budgets 500k,1M,2M,4M] [--widths 64,96,128,192] [--n-layer 4] [--seed 1]
        [--skip 192@4M] [--jobs 2] [--out experiments/size-rule] [--plot docs/size-rule.png]

Trains the recipe at every width x token budget of the grid (`klm run --tokens D`, float32,
one thread per run, ``--jobs`` runs at a time; finished runs are reused, so an interrupted
study resumes), then, for each budget, fits val_bpb against log N (N: the parameters outside
the embedding tables and the read-out) with a parabola and takes its minimum N*(D),
and fits the power law N*(D) = k D^a to those minima by least squares in log-log. Prints the
table, the minima and k, a (the constants of kennethlm_core/sizing.py), writes fit.json in
the study folder and plots val_bpb against N per budget, with each minimum and the fit. N is
counted as `--size auto` counts it (sizing.body_params).

Budgets are in tokens, not time, so the study does not depend on the machine or its load;
`--size auto` turns a time budget into tokens with the tokens/s it measures for each shape.
A budget whose best width is at the edge of the grid has no interior minimum: it is reported
and left out of the fit (widen the grid).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def parse_tokens(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def label(tokens: int) -> str:
    return f"{tokens / 1e6:g}M" if tokens >= 1_000_000 else f"{tokens / 1e3:g}k"


def run_dir(out: Path, width: int, tokens: int) -> Path:
    return out / f"w{width}-{label(tokens)}"


def command(args, width: int, tokens: int) -> list[str]:
    heads = max(1, width // 32)  # head size 32, as the shapes of sizing.SHAPES
    cmd = [sys.executable, "-m", "kennethlm_core", "run", "--recipe", args.recipe]
    cmd += ["--tokens", str(tokens), "--n-layer", str(args.n_layer), "--n-embd", str(width)]
    cmd += ["--n-head", str(heads), "--corpus", args.corpus, "--seed", str(args.seed)]
    cmd += ["--dtype", "float32", "--set", "threads=1", "-q"]
    return cmd + ["--out", str(run_dir(args.out, width, tokens))]


def train_grid(args, cells: list[tuple[int, int]]) -> None:
    todo = [c for c in cells if not (run_dir(args.out, *c) / "summary.json").exists()]
    running: list[tuple[tuple[int, int], subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            cell = todo.pop(0)
            folder = run_dir(args.out, *cell)
            resume = (folder / "config.json").exists()
            cmd = command(args, *cell)
            if resume:
                cmd = [*cmd[:4], "--resume", str(folder), "-q"]
            print(
                f"width {cell[0]}, {label(cell[1])} tokens: {'resuming' if resume else 'training'}"
            )
            running.append((cell, subprocess.Popen(cmd)))
        time.sleep(1)
        for item in list(running):
            cell, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    sys.exit(f"width {cell[0]}, {label(cell[1])} tokens failed ({proc.returncode})")


def read(args, cells) -> list[dict]:
    from kennethlm_core.model import build_model
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.sizing import body_params
    from kennethlm_core.train import load_run_config

    rows = []
    for width, tokens in cells:
        folder = run_dir(args.out, width, tokens)
        summary = json.loads((folder / "summary.json").read_text())
        cfg = load_run_config(folder, get_registry())
        model = build_model(cfg, summary["vocab_size"], get_registry())
        rows.append(
            {
                "width": width,
                "tokens": tokens,
                "params": summary["params"],
                "n": body_params(model),  # as --size auto counts it
                "val_bpb": summary["val_bpb"],
                "tokens_per_s": summary["tokens_per_s"],
                "run": str(folder),
            }
        )
    return rows


def fit(rows: list[dict]) -> dict:
    """N*(D) per budget (a parabola in log N through its runs), then k and a of N* = k D^a."""
    minima, edge = [], []
    for tokens in sorted({r["tokens"] for r in rows}):
        at = sorted((r for r in rows if r["tokens"] == tokens), key=lambda r: r["n"])
        x = np.log([r["n"] for r in at])
        y = np.array([r["val_bpb"] for r in at])
        best = int(np.argmin(y))
        if len(at) < 3 or best in (0, len(at) - 1):
            edge.append({"tokens": tokens, "best_width": at[best]["width"]})
            continue
        c2, c1, _ = np.polyfit(x, y, 2)
        minima.append({"tokens": tokens, "n_star": float(math.exp(-c1 / (2 * c2)))})
    result = {"minima": minima, "edge": edge}
    if len(minima) >= 2:
        a, log_k = np.polyfit(
            np.log([m["tokens"] for m in minima]), np.log([m["n_star"] for m in minima]), 1
        )
        result |= {"k": float(math.exp(log_k)), "a": float(a)}
    return result


def plot(rows: list[dict], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for tokens in sorted({r["tokens"] for r in rows}):
        at = sorted((r for r in rows if r["tokens"] == tokens), key=lambda r: r["n"])
        left.plot(
            [r["n"] for r in at], [r["val_bpb"] for r in at], "o-", label=f"{label(tokens)} tokens"
        )
    for m in result["minima"]:
        left.axvline(m["n_star"], color="grey", lw=0.6, ls=":")
    left.set_xscale("log")
    left.set_xlabel("parameters outside the embedding, N")
    left.set_ylabel("val_bpb")
    left.legend()
    left.set_title("val_bpb against size, per token budget")
    if "k" in result:
        d = np.array([m["tokens"] for m in result["minima"]])
        right.plot(d, [m["n_star"] for m in result["minima"]], "o", label="best N per budget")
        grid = np.geomspace(d.min() / 2, d.max() * 8, 50)
        right.plot(
            grid,
            result["k"] * grid ** result["a"],
            "-",
            label=f"N* = {result['k']:.3g} D^{result['a']:.2f}",
        )
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("training tokens, D")
        right.set_ylabel("best N")
        right.legend()
        right.set_title("the size rule")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="record")
    p.add_argument("--corpus", default="../shared/data/corpus")
    p.add_argument("--budgets", default="500k,1M,2M,4M")
    p.add_argument("--widths", default="64,96,128,192")
    p.add_argument("--skip", default="192@4M", help="cells left out, WIDTH@TOKENS,...")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "size-rule")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "size-rule.png")
    args = p.parse_args()
    skip = {(int(w), parse_tokens(t)) for w, t in (s.split("@") for s in args.skip.split(",") if s)}
    cells = [
        (int(w), parse_tokens(t))
        for t in args.budgets.split(",")
        for w in args.widths.split(",")
        if (int(w), parse_tokens(t)) not in skip
    ]
    train_grid(args, cells)
    rows = read(args, cells)
    print(f"{'width':>5} {'tokens':>7} {'N':>10} {'val_bpb':>8} {'tokens/s':>9}")
    for r in rows:
        size = f"{r['width']:>5} {label(r['tokens']):>7} {r['n']:>10,}"
        print(f"{size} {r['val_bpb']:>8.4f} {r['tokens_per_s']:>9,.0f}")
    result = fit(rows)
    for m in result["minima"]:
        ratio = m["tokens"] / m["n_star"]
        print(
            f"best N at {label(m['tokens'])} tokens: {m['n_star']:,.0f} ({ratio:.1f} per parameter)"
        )
    for e in result["edge"]:
        print(
            f"{label(e['tokens'])} tokens: best at the edge (width {e['best_width']}), not fitted"
        )
    if "k" in result:
        print(f"size rule: N* = {result['k']:.4g} * D^{result['a']:.4f}")
    (args.out / "fit.json").write_text(json.dumps({"rows": rows, **result}, indent=1))
    plot(rows, result, args.plot)
    print(f"written {args.out / 'fit.json'} and {args.plot}")


if __name__ == "__main__":
    main()
