"""Wall time of `klm eval RUN --task all` with default limits on ../shared/data/eval.

    python benchmarks/eval_suite.py RUN            evaluate an existing run folder
    python benchmarks/eval_suite.py --train 10m    train the baseline recipe on
                                                   ../shared/data/corpus first (time budget)

Prints the table (as `klm eval` does) and the evaluation's wall time, model loading
included, training and start-up excluded; the target is under 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", help="a run folder (default: train one)")
    parser.add_argument("--train", default="10m", help="training time when no run is given")
    parser.add_argument("--out", default="runs/eval-suite-baseline", help="where to train")
    parser.add_argument("--data", default=str(SHARED / "eval"))
    args = parser.parse_args()
    klm = [sys.executable, "-m", "kennethlm_core"]
    run = args.run
    if run is None:
        run = args.out
        subprocess.run(
            [*klm, "run", "--recipe", "baseline", "--corpus", str(SHARED / "corpus"),
             "--time", args.train, "--out", run, "--force", "-q"],
            check=True,
        )  # fmt: skip
    from kennethlm_core.cli import main as klm_main

    t0 = time.perf_counter()
    try:
        klm_main(["eval", run, "--task", "all", "--data", args.data])
    except SystemExit as e:
        if e.code:
            raise
    wall = time.perf_counter() - t0
    import torch

    print(f"eval wall time {wall:.1f}s ({torch.get_num_threads()} torch threads); target < 120s")


if __name__ == "__main__":
    main()
