"""Training throughput and model-FLOPs utilisation (MFU) of a recipe, on this machine.

    python benchmarks/throughput.py [--recipe baseline] [--corpus ../shared/data/corpus]
        [--steps 200] [--dtype float32 bfloat16] [--compile] [--threads 1 2] [--profile] [--bare]

For every combination of threads, dtype (autocast) and compilation it trains the recipe with
the real trainer (`train()`, no evaluation during training) and reports:

- tokens/s: steady state, from the trainer's own clock between step ``--warmup`` and the end;
- warm-up: the training time of the first ``--warmup`` steps beyond what the steady rate
  predicts for them. With ``--compile`` this is mostly torch.compile's compilation, which a
  timed run (``--time 15m``) pays out of its budget;
- MFU: model FLOPs per second / the matmul peak. The peak is measured here, in the same
  process, with the same thread count: the best FLOP/s of square matmuls in that dtype. Model
  FLOPs per token follow nanoGPT: 6 * (parameters other than the position table, the tied
  token matrix included, since the read-out multiplies by it) + 12 * n_layer * n_embd *
  block_size (attention scores and their weighted sum).

``--profile`` also runs cProfile over a short training run and prints where the time goes.
``--bare`` also times the plainest loop over the same model, optimizer and data (the way
nanoGPT's train.py is written), so the trainer's overhead shows as a ratio.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.device import cpu_name
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry
from kennethlm_core.train import train

REPO = Path(__file__).resolve().parent.parent


def matmul_peak(dtype: torch.dtype, device: str = "cpu", seconds: float = 2.0) -> float:
    """Best FLOP/s over a few square matmul sizes (at least one timed product each)."""
    best = 0.0
    sizes = (1024, 2048, 4096, 8192) if device == "cuda" else (256, 512, 1024, 2048)
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm up
        if device == "cuda":
            torch.cuda.synchronize()
        reps, start = 0, time.perf_counter()
        while reps == 0 or time.perf_counter() - start < seconds / 4:
            a @ b
            reps += 1
            if device == "cuda":
                torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def best_peak(device: str = "cpu") -> tuple[float, str]:
    """(FLOP/s, dtype): the faster of the float32 and the bf16 matmul peak, bf16 measured only
    where the machine has bf16 matrix units (a CPU without them emulates bf16, slowly). MFU
    against this peak says how much of the machine a run uses, whatever precision it chose."""
    from kennethlm_core.precision import has_bf16_matmul

    peaks = {"float32": matmul_peak(torch.float32, device)}
    if has_bf16_matmul(torch.device(device)):
        peaks["bfloat16"] = matmul_peak(torch.bfloat16, device)
    dtype = max(peaks, key=peaks.get)
    return peaks[dtype], dtype


def matmul_params(model: torch.nn.Module) -> int:
    """The parameters a token is multiplied by: all but the embedding tables (token, learned
    positions, hashed bigrams, value embeddings), which are only looked up; the output head
    counts even when it is tied to the token table."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in tables)
    head = getattr(model, "lm_head", None)
    if head is not None and id(head.weight) in tables:
        n += head.weight.numel()
    return n


def flops_per_token(cfg, vocab_size: int, registry) -> float:
    """Training FLOPs per token: 6 per matmul parameter (forward and backward) plus attention's
    scores and weighted sum, 12 x layers x width x context (the PaLM paper's count)."""
    with torch.device("meta"):
        model = build_model(cfg, vocab_size, registry)
    return 6 * matmul_params(model) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def measure(cfg, registry, warmup: int) -> dict:
    """Train cfg once; steady tokens/s after `warmup` steps and the warm-up's extra time."""
    marks: list[tuple[int, float]] = []

    def progress(clock, fraction, loss, val_bpb, tps):
        marks.append((clock.step, clock.train_time))

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        s = train(cfg, Path(out) / "run", registry=registry, progress=progress)
        wall = time.perf_counter() - start
    tokens_per_step = cfg.batch_size * cfg.block_size
    w_step, w_time = next(((st, t) for st, t in marks if st >= warmup), marks[0])
    end_step, end_time = marks[-1]
    steady = (end_step - w_step) * tokens_per_step / (end_time - w_time)
    extra = w_time - w_step * tokens_per_step / steady
    return {"summary": s, "tokens_per_s": steady, "warmup_s": extra, "wall_s": wall}


def bare_loop(cfg, registry, warmup: int) -> float:
    """Steady tokens/s of the plainest training loop over the same model, optimizer, precision
    and data, as nanoGPT's train.py is written: draw random windows, forward, backward, clip,
    step. No clock, no checks, no schedule: the trainer's rate over this one is its overhead."""
    import numpy as np

    from kennethlm_core.data import prepare_data
    from kennethlm_core.precision import Precision

    data = prepare_data(cfg, registry)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.tokenizer.vocab_size, registry)
    optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
    autocast = Precision(cfg.dtype, "bare").autocast  # main() always gives the dtype
    tokens = torch.from_numpy(data.train.tokens.astype(np.int64))
    T, B = cfg.block_size, cfg.batch_size
    start = 0.0
    for step in range(cfg.steps):
        if step == warmup:
            start = time.perf_counter()
        i = torch.randint(len(tokens) - T - 1, (B,))
        x = torch.stack([tokens[j : j + T] for j in i])
        y = torch.stack([tokens[j + 1 : j + 1 + T] for j in i])
        with autocast(torch.device("cpu")):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (cfg.steps - warmup) * B * T / (time.perf_counter() - start)


def profile(cfg, registry, lines: int = 18) -> str:
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as out:
        profiler.enable()
        train(cfg, Path(out) / "run", registry=registry)
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="baseline")
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="steps before the steady rate")
    parser.add_argument("--dtype", nargs="+", default=["float32"], help="float32 bfloat16")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--profile", action="store_true", help="cProfile a short run")
    parser.add_argument(
        "--bare", action="store_true", help="also time a plain nanoGPT-style loop (no compile)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value settings")
    args = parser.parse_args()

    registry = get_registry()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {load:.2f} at the start"
    )
    print(f"recipe {args.recipe} on {args.corpus}, {args.steps} steps\n")
    base = {
        "corpus": args.corpus,
        "steps": args.steps,
        "eval_every": 10**9,
        "eval_bytes": 4096,
        "final_eval_bytes": 4096,
        **dict(s.split("=", 1) for s in args.set),
    }
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in args.dtype:
            peak = matmul_peak(getattr(torch, dtype))
            for compiled in [False, True] if args.compile else [False]:
                overrides = {**base, "dtype": dtype, "compile": compiled, "threads": threads}
                cfg = resolve(build_config(args.recipe, overrides), registry)
                m = measure(cfg, registry, args.warmup)
                per_token = flops_per_token(cfg, m["summary"]["vocab_size"], registry)
                achieved = per_token * m["tokens_per_s"]
                row = (threads, dtype, compiled, m["tokens_per_s"], m["warmup_s"], achieved, peak)
                rows.append((*row, m["wall_s"], m["summary"]["val_bpb"]))
                print(
                    f"  {threads} threads {dtype} compile={compiled}: "
                    f"{m['tokens_per_s']:,.0f} tokens/s, MFU {achieved / peak:.1%}",
                    flush=True,
                )
                if args.bare and not compiled:
                    bare = bare_loop(cfg, registry, args.warmup)
                    print(
                        f"  {threads} threads {dtype} plain loop: {bare:,.0f} tokens/s; the "
                        f"trainer runs at {m['tokens_per_s'] / bare:.2f}x of it",
                        flush=True,
                    )
    print(
        f"\n{'threads':>7} {'dtype':<9}{'compile':>8}{'tokens/s':>10}{'warm-up s':>10}"
        f"{'GFLOP/s':>9}{'peak':>8}{'MFU':>7}{'wall s':>8}{'val_bpb':>9}"
    )
    for threads, dtype, compiled, tps, warm, achieved, peak, wall, bpb in rows:
        print(
            f"{threads:>7} {dtype:<9}{'yes' if compiled else 'no':>8}{tps:>10,.0f}{warm:>10.1f}"
            f"{achieved / 1e9:>9.2f}{peak / 1e9:>8.1f}{achieved / peak:>7.1%}{wall:>8.1f}"
            f"{bpb:>9.4f}"
        )
    print(
        "peak: best matmul GFLOP/s in that dtype and thread count; warm-up: extra training "
        f"time of the first {args.warmup} steps (compilation, with compile); val_bpb on 4 KiB"
    )
    if args.profile:
        torch.set_num_threads(args.threads[-1])
        overrides = {**base, "steps": min(args.steps, 100), "dtype": args.dtype[0]}
        cfg = resolve(build_config(args.recipe, overrides), registry)
        print(f"\ncProfile of {cfg.steps} steps ({args.dtype[0]}), by own time:")
        print(profile(cfg, registry))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} at the end")


if __name__ == "__main__":
    sys.exit(main())
