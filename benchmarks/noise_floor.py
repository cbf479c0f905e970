"""The noise floor of the improvement protocol: how much final val_bpb moves with the seed alone.

    python benchmarks/noise_floor.py [--recipe record] [--corpus ../shared/data/corpus]
                                     [--steps 600 2000] [--seeds 5] [--jobs 2]
                                     [--out experiments/noise-floor]

Trains the recipe over the seeds at each budget (the runs klm compare would train for its
baseline arm: seeds 1..N, same data order per seed) and prints, per budget, the mean and
standard deviation of the final val_bpb, the training time per run, and the smallest
improvement a 5-seed comparison could call significant if the two arms were independent. Runs
go to --out/steps-<N>/seed-<s>; finished runs are reused, so the script can be stopped and run
again. val_bpb is deterministic; the times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from scipy import stats

from kennethlm_core.config import build_config, resolve
from kennethlm_core.data import prepare_data
from kennethlm_core.experiment import Job, mean_std, run_jobs, run_state
from kennethlm_core.plugins import get_registry

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="record")
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    ap.add_argument("--steps", type=int, nargs="+", default=[600, 2000])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "noise-floor")
    args = ap.parse_args()

    registry = get_registry()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    rows = []
    for steps in args.steps:
        cfg = resolve(build_config(args.recipe, {"corpus": args.corpus, "steps": steps}), registry)
        prepare_data(cfg, registry, log=print)
        jobs = []
        for seed in range(1, args.seeds + 1):
            job = Job("noise", seed, cfg.replace(seed=seed, threads=threads), Path())
            job.out = args.out / f"steps-{steps}" / f"seed-{seed}"
            job.mode = run_state(job, None, force=False)
            jobs.append(job)
        run_jobs(jobs, args.jobs, registry, disabled=[], logs=args.out / "logs", say=print)
        summaries = [json.loads((j.out / "summary.json").read_text()) for j in jobs]
        bpb = [s["val_bpb"] for s in summaries]
        mean, std = mean_std(bpb)
        seconds = mean_std([s["train_time_s"] for s in summaries])[0]
        rows.append((steps, bpb, mean, std, seconds, summaries[0]["device"]))

    n = args.seeds
    t = stats.t.ppf(0.99, n - 1)  # one-sided test at alpha 0.01 with n paired seeds
    print(f"\n{args.recipe} on {args.corpus}, seeds 1..{n}")
    print(f"{'steps':>6} {'mean val_bpb':>13} {'std':>8} {'range':>8} {'s/run':>7}  detectable")
    for steps, bpb, mean, std, seconds, _device in rows:
        detectable = t * math.sqrt(2) * std / math.sqrt(n)
        print(
            f"{steps:>6} {mean:>13.4f} {std:>8.4f} {max(bpb) - min(bpb):>8.4f} "
            f"{seconds:>7.0f}  {detectable:.4f}"
        )
        print(f"{'':>6} per seed: {', '.join(f'{v:.4f}' for v in bpb)}")
    print(f"device: {rows[-1][5]}; times are training only, disturbed by other load")
    print("detectable: the delta a 5-seed paired test calls significant at p < 0.01 when the")
    print("arms' seed noise is independent (t * sqrt(2) * std / sqrt(n)); pairing lowers it")


if __name__ == "__main__":
    main()
