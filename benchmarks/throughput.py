"""Training throughput and model-FLOPs utilisation (MFU) of a recipe, on this machine.

    python benchmarks/throughput.py [--recipe baseline] [--corpus ../shared/data/corpus]
                                    [--steps 300] [--dtype float32 bfloat16]

The peak is measured here, in the same process: the best FLOP/s of large square matmuls in
each dtype. MFU = (model FLOPs per token x tokens/s) / that peak, with nanoGPT's count of
model FLOPs per token: 6 * (non-embedding parameters) + 12 * n_layer * n_embd * block_size.
Tokens/s comes from the trainer's own clock (training steps only, no evaluation).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.train import cpu_name, train

REPO = Path(__file__).resolve().parent.parent


def matmul_peak(dtype: torch.dtype, device: str = "cpu", seconds: float = 2.0) -> float:
    """Best FLOP/s over a few square matmul sizes."""
    best = 0.0
    for n in (512, 1024, 2048):
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # warm up
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def flops_per_token(cfg, params: int, vocab: int) -> float:
    embedding = vocab * cfg.n_embd + (cfg.block_size * cfg.n_embd if cfg.posemb == "learned" else 0)
    return 6 * (params - embedding) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="baseline")
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dtype", nargs="+", default=["float32"], help="e.g. float32 bfloat16")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value settings")
    args = parser.parse_args()

    registry = get_registry()
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"recipe {args.recipe} on {args.corpus}, {args.steps} steps\n")
    rows = []
    for dtype in args.dtype:
        peak = matmul_peak(getattr(torch, dtype))
        extra = dict(s.split("=", 1) for s in args.set)
        overrides = {
            "corpus": args.corpus,
            "steps": args.steps,
            "dtype": dtype,
            "eval_every": 10**9,
            "final_eval_bytes": 4096,
            **extra,
        }
        cfg = resolve(build_config(args.recipe, overrides), registry)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            s = train(cfg, Path(out) / "run", registry=registry, log=lambda m: print(f"  {m}"))
            wall = time.perf_counter() - start
        achieved = flops_per_token(cfg, s["params"], s["vocab_size"]) * s["tokens_per_s"]
        rows.append((dtype, s["tokens_per_s"], achieved / 1e9, peak / 1e9, achieved / peak, wall))
    print(
        f"\n{'dtype':<10}{'tokens/s':>12}{'model GFLOP/s':>15}{'peak GFLOP/s':>14}"
        f"{'MFU':>8}{'wall s':>9}"
    )
    for dtype, tps, gf, peak, mfu, wall in rows:
        print(f"{dtype:<10}{tps:>12,.0f}{gf:>15.1f}{peak:>14.1f}{mfu:>8.1%}{wall:>9.1f}")
    if len(rows) == 2:
        print(f"\n{rows[1][0]} / {rows[0][0]} tokens/s: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
