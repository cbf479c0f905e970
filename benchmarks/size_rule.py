"""The size rule behind `klm run --size auto`: how val_bpb falls with model size and tokens.

    python benchmarks/size_rule.py [--recipe record] [--corpus ../shared/data/corpus]
        [--budgets 500k,1M,2M] [--widths 64,96,128,192] [--n-layer 4] [--seed 1]
        [--skip WIDTH@TOKENS,...] [--jobs 2] [--out experiments/size-rule] [--plot PNG]

Trains the recipe at every width x token budget of the grid (`klm run --tokens D`, float32,
one thread per run, ``--jobs`` runs at a time; finished runs are reused, so an interrupted
study resumes), then fits the loss model of Hoffmann et al. (2022),

    val_bpb(N, D) = E + A / N**alpha + B / D**beta,

to the runs by least squares (for each alpha, beta on a grid the rest is linear), N being the
parameters outside the embedding tables and the read-out (as `--size auto` counts them,
sizing.body_params) and D the training tokens, and measures the tokenizer's bytes per token
(`--size auto` counts a run's text in these tokens). Prints the runs, the fit and its residuals,
writes fit.json in the study folder and plots val_bpb against D per width, with the fit.

At a fixed number of tokens a bigger model is better; at a fixed *time* it sees fewer tokens.
`--size auto` measures each shape's tokens/s on the machine, so D = tokens/s x time, and takes
the shape the fitted val_bpb(N, D) says is best. Budgets here are tokens, not time, so the
study does not depend on the machine or its load.
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
    from kennethlm_core.rundir import load_run_config
    from kennethlm_core.sizing import body_params

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
    """E, A, alpha, B, beta of val_bpb = E + A N^-alpha + B D^-beta, by least squares: for
    each (alpha, beta) of a grid the model is linear in E, A, B (kept >= 0)."""
    n = np.array([r["n"] for r in rows], dtype=float)
    d = np.array([r["tokens"] for r in rows], dtype=float)
    y = np.array([r["val_bpb"] for r in rows])
    best = None
    for alpha in np.arange(0.02, 1.51, 0.01):
        for beta in np.arange(0.02, 1.51, 0.01):
            x = np.stack([np.ones_like(y), n**-alpha, d**-beta], axis=1)
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            if (coef[1:] < 0).any():
                continue
            sse = float(((x @ coef - y) ** 2).sum())
            if best is None or sse < best[0]:
                best = (sse, alpha, beta, coef)
    sse, alpha, beta, (e, a, b) = best
    rms = math.sqrt(sse / len(y))
    return {"E": float(e), "A": float(a), "alpha": float(alpha), "B": float(b),
            "beta": float(beta), "rms": rms}  # fmt: skip


def predict(f: dict, n, d):
    return (
        f["E"]
        + f["A"] * np.asarray(n, float) ** -f["alpha"]
        + f["B"] * np.asarray(d, float) ** -f["beta"]
    )


def plot(rows: list[dict], f: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.geomspace(min(r["tokens"] for r in rows) / 2, 2e7, 60)
    for width in sorted({r["width"] for r in rows}):
        at = sorted((r for r in rows if r["width"] == width), key=lambda r: r["tokens"])
        line = ax.plot([r["tokens"] for r in at], [r["val_bpb"] for r in at], "o")[0]
        ax.plot(grid, predict(f, at[0]["n"], grid), "-", color=line.get_color(),
                label=f"width {width} (N {at[0]['n']:,})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training tokens, D")
    ax.set_ylabel("val_bpb")
    terms = f"{f['A']:.3g} N^-{f['alpha']:.2f} + {f['B']:.3g} D^-{f['beta']:.2f}"
    ax.set_title(f"val_bpb = {f['E']:.2f} + {terms}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def bytes_per_token(args) -> float:
    """UTF-8 bytes per token of the recipe's tokenizer on the corpus (from the token cache the
    runs filled): sizing.FIT_BYTES_PER_TOKEN, since `--size auto` counts text in these tokens."""
    from kennethlm_core.config import resolve
    from kennethlm_core.data import prepare_data
    from kennethlm_core.data.tokens import domain_stats
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.recipes import build_config

    registry = get_registry()
    cfg = resolve(build_config(args.recipe, {"corpus": args.corpus}), registry)
    data = prepare_data(cfg, registry, log=lambda message: None)
    return domain_stats(data)["total"]["bytes_per_token"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="record")
    p.add_argument("--corpus", default="../shared/data/corpus")
    p.add_argument("--budgets", default="500k,1M,2M")
    p.add_argument("--widths", default="64,96,128,192")
    p.add_argument("--skip", default="", help="cells left out, WIDTH@TOKENS,...")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "size-rule")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "size-rule.png")
    p.add_argument("--fit-only", action="store_true", help="fit the finished runs, train none")
    args = p.parse_args()
    skip = {(int(w), parse_tokens(t)) for w, t in (s.split("@") for s in args.skip.split(",") if s)}
    cells = [
        (int(w), parse_tokens(t))
        for t in args.budgets.split(",")
        for w in args.widths.split(",")
        if (int(w), parse_tokens(t)) not in skip
    ]
    if args.fit_only:
        cells = [c for c in cells if (run_dir(args.out, *c) / "summary.json").exists()]
    else:
        train_grid(args, cells)
    rows = read(args, cells)
    print(f"{'width':>5} {'tokens':>7} {'N':>10} {'val_bpb':>8} {'tokens/s':>9}")
    for r in rows:
        size = f"{r['width']:>5} {label(r['tokens']):>7} {r['n']:>10,}"
        print(f"{size} {r['val_bpb']:>8.4f} {r['tokens_per_s']:>9,.0f}")
    f = fit(rows)
    print(
        f"fit: val_bpb = {f['E']:.4f} + {f['A']:.6g} N^-{f['alpha']:.2f} "
        f"+ {f['B']:.6g} D^-{f['beta']:.2f}, rms residual {f['rms']:.4f}"
    )
    f["bytes_per_token"] = bytes_per_token(args)
    print(f"D in tokens of {args.recipe}'s tokenizer: {f['bytes_per_token']:.4f} bytes per token")
    for r in rows:
        r["fitted"] = float(predict(f, r["n"], r["tokens"]))
        print(
            f"  width {r['width']}, {label(r['tokens'])}: {r['val_bpb']:.4f}, fit {r['fitted']:.4f}"
        )
    (args.out / "fit.json").write_text(json.dumps({"rows": rows, "fit": f}, indent=1))
    plot(rows, f, args.plot)
    print(f"written {args.out / 'fit.json'} and {args.plot}")


if __name__ == "__main__":
    main()
