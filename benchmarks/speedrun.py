"""The speedrun: `baseline` and `record` trained for the same wall time on the same machine.

    python benchmarks/speedrun.py [--time 15m] [--corpus ../shared/data/corpus]
        [--baseline baseline] [--record record] [--seed 1] [--out experiments/speedrun-15m]
        [--set key=value ...] [--side-by-side] [--size auto] [--device auto]

Trains the two recipes one after the other, each as its own `klm run --time T` process with
all the cores, or with ``--side-by-side`` at the same time, each with half of them (half the
wall time, and both runs see the same load on a shared machine). Prints for each: final
val_bpb (the run's summary, scored on the final validation slice), tokens/s and MFU (model
FLOPs per token as benchmarks/throughput.py counts them, against the best matmul peak the
machine measures just before each run, at the runs' thread count: bf16 where it has bf16
units, else float32) and peak resident memory of
the process. Then the time `record` needed to reach `baseline`'s final val_bpb, read from the
validation log (metrics.jsonl: the fixed training slice, evaluated every eval_every steps; the
time is the training clock at the first evaluation at or below baseline's last one, so it is
an upper bound by up to eval_every steps).

``--size auto`` lets the record run choose its shape for the time on this machine (`klm run
--size auto`); the shapes, and why, are printed. A timed run depends on the machine and its
load: run it on a quiet machine (the script prints the load average before and after) and
compare figures only from the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import best_peak, flops_per_token  # noqa: E402

from kennethlm_core.config import RunConfig, parse_duration  # noqa: E402
from kennethlm_core.device import describe_device, pick_device  # noqa: E402
from kennethlm_core.plugins import get_registry  # noqa: E402
from kennethlm_core.rundir import read_metrics  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def start(recipe: str, args, out: Path, extra=()) -> tuple[subprocess.Popen, float]:
    """`klm run --recipe RECIPE --time T` in a child process."""
    cmd = [sys.executable, "-m", "kennethlm_core", "run", "--recipe", recipe, *extra]
    cmd += ["--time", args.time, "--corpus", args.corpus, "--seed", str(args.seed)]
    cmd += ["--device", args.device]
    cmd += ["--out", str(out), "--force", "-q"]
    for setting in args.set:
        cmd += ["--set", setting]
    print(f"{recipe}: {' '.join(cmd[2:])}", flush=True)
    return subprocess.Popen(cmd), time.perf_counter()


def finish(recipe: str, started: tuple[subprocess.Popen, float], out: Path) -> dict:
    """Wait for a run from start(); its summary, wall time and peak RSS."""
    proc, t0 = started
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"speedrun: {recipe} failed (exit {proc.returncode})")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = time.perf_counter() - t0
    summary["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    summary["config"] = json.loads((out / "config.json").read_text())
    summary["metrics"] = read_metrics(out)
    return summary


def time_to_reach(metrics: list[dict], target: float) -> float | None:
    """Training time at the first evaluation with val_bpb at or below target."""
    for row in metrics:
        if row["step"] > 0 and row["val_bpb"] <= target:
            return row["train_time_s"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", default="15m", help="training time per recipe (90s, 15m)")
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    ap.add_argument("--baseline", default="baseline")
    ap.add_argument("--record", default="record")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (klm run --device)")
    ap.add_argument("--out", type=Path, help="default experiments/speedrun-<time>")
    ap.add_argument("--set", action="append", default=[], help="key=value for both runs")
    ap.add_argument(
        "--size", choices=["auto"], help="auto: the record run picks its shape (klm run --size)"
    )
    ap.add_argument(
        "--side-by-side", action="store_true", help="train both at once, each on half the cores"
    )
    args = ap.parse_args()
    if args.side_by_side and not any(s.startswith("threads=") for s in args.set):
        args.set.append(f"threads={max(1, (os.cpu_count() or 2) // 2)}")
    seconds = parse_duration(args.time)
    out = args.out or REPO / "experiments" / f"speedrun-{seconds:g}s"

    device = pick_device(args.device)
    print(
        f"machine: {describe_device(device)}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"load average {load():.2f} at the start"
    )
    if load() > 1.5:
        print("warning: the machine is busy; the timings will be pessimistic")
    recipes = {"baseline": args.baseline, "record": args.record}
    extra = {"baseline": [], "record": ["--size", args.size] if args.size else []}
    runs, peaks = {}, {}
    if args.side_by_side:
        threads = int(next(s for s in args.set if s.startswith("threads=")).split("=")[1])
        torch.set_num_threads(threads)
        peak, dtype = best_peak(device.type)
        peaks["baseline"] = peaks["record"] = peak
        print(f"{dtype} matmul peak, {threads} threads: {peak / 1e9:.1f} GFLOP/s")
        started = {arm: start(recipes[arm], args, out / arm, extra[arm]) for arm in recipes}
        runs = {arm: finish(recipes[arm], started[arm], out / arm) for arm in recipes}
    else:
        for arm in recipes:
            # the peak just before each run: under a changing load, one peak for both misleads
            peaks[arm], dtype = best_peak(device.type)
            print(f"{dtype} matmul peak before {arm}: {peaks[arm] / 1e9:.1f} GFLOP/s")
            started = start(recipes[arm], args, out / arm, extra[arm])
            runs[arm] = finish(recipes[arm], started, out / arm)
    end_load = load()

    target = runs["baseline"]["metrics"][-1]["val_bpb"]  # on the training-time slice
    reached = time_to_reach(runs["record"]["metrics"], target)
    print(f"\nspeedrun: {args.time} of training each on {args.corpus}, seed {args.seed}")
    print(
        f"{'':<10}{'recipe':<12}{'val_bpb':>9}{'last log':>10}{'tokens/s':>10}{'MFU':>7}"
        f"{'steps':>8}{'params':>11}{'peak RSS':>10}"
    )
    report = {"time_s": seconds, "corpus": args.corpus, "seed": args.seed, "peaks": peaks}
    report["side_by_side"] = args.side_by_side
    registry = get_registry()
    for arm, s in runs.items():
        cfg = RunConfig.from_dict(s["config"])
        mfu = flops_per_token(cfg, s["vocab_size"], registry) * s["tokens_per_s"] / peaks[arm]
        print(
            f"{arm:<10}{recipes[arm]:<12}"
            f"{s['val_bpb']:>9.4f}{s['metrics'][-1]['val_bpb']:>10.4f}{s['tokens_per_s']:>10,.0f}"
            f"{mfu:>7.1%}{s['steps']:>8,}{s['params']:>11,}{s['peak_rss_mb']:>8,.0f}MB"
        )
        report[arm] = {
            "recipe": recipes[arm],
            "val_bpb": s["val_bpb"],
            "last_logged_val_bpb": s["metrics"][-1]["val_bpb"],
            "tokens_per_s": s["tokens_per_s"],
            "mfu": mfu,
            "steps": s["steps"],
            "params": s["params"],
            "peak_rss_mb": s["peak_rss_mb"],
            "train_time_s": s["train_time_s"],
            "wall_s": s["wall_s"],
            "device": s["device"],
            "dtype": s.get("dtype"),
        }
        print(f"{'':<10}precision {s.get('dtype')} ({(s.get('precision') or {}).get('reason')})")
        shape = f"{cfg.n_layer} layers x {cfg.n_embd} ({cfg.n_head} heads)"
        if s.get("size"):  # --size auto's reason starts with the shape it chose
            shape = s["size"]["reason"]
        print(f"{'':<10}shape {shape}")
        report[arm]["shape"] = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "size": s.get("size")}
    if reached is None:
        print(f"record did not reach baseline's last logged val_bpb {target:.4f}")
    else:
        spent = runs["baseline"]["train_time_s"]  # the clock may pass --time in the last step
        print(
            f"record reached baseline's last logged val_bpb {target:.4f} after {reached:.0f}s "
            f"of training ({spent / reached:.1f}x faster than baseline's {spent:.0f}s)"
        )
    delta = runs["record"]["val_bpb"] - runs["baseline"]["val_bpb"]
    print(f"Δ final val_bpb (record - baseline): {delta:+.4f}")
    print(f"load average {end_load:.2f} at the end; device: {runs['record']['device']}")
    report |= {"time_to_baseline_s": reached, "target_val_bpb": target, "delta": delta}
    report["load"] = end_load
    (out / "speedrun.json").write_text(json.dumps(report, indent=2))
    print(f"written to {out / 'speedrun.json'}")


if __name__ == "__main__":
    sys.exit(main())
