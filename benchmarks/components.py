"""Attention kernels and positional embeddings side by side: tokens/s and final val_bpb.

    python benchmarks/components.py [--corpus ../shared/data/corpus] [--recipe baseline]
                                    [--steps 200] [--seed 1337] [--rounds 7] [--set k=v ...]

Each arm is the recipe with one slot changed: attention naive vs flash, then posemb learned
vs sinusoidal vs rope vs alibi vs none. One seed per arm: a first look, not a verdict (that is
`klm compare`, with five seeds and a paired test).

- val_bpb: each arm trains ``--steps`` steps and is scored on the first ``final_eval_bytes``
  of validation text, as `klm run` does; deterministic for a seed on the CPU.
- run tok/s: the trainer's own clock during that run (training steps only).
- tok/s: the median over ``--rounds`` rounds in which the arms take turns training for 20
  steps each. A machine whose load changes (shared with other jobs) slows every arm alike
  within a round, so these figures and their ratios are the ones to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.device import cpu_name, pick_device
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry
from kennethlm_core.train import train

REPO = Path(__file__).resolve().parent.parent
ARMS = [
    ("attention", "naive"),
    ("attention", "flash"),
    ("posemb", "learned"),
    ("posemb", "sinusoidal"),
    ("posemb", "rope"),
    ("posemb", "alibi"),
    ("posemb", "none"),
]


def interleaved_throughput(cfgs: dict, vocab: int, registry, rounds: int, steps: int = 20):
    """Median training tokens/s per arm, the arms taking turns within every round."""
    arms = {}
    for key, cfg in cfgs.items():
        device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, vocab, registry).to(device)
        optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
        x = torch.randint(vocab, (cfg.batch_size, cfg.block_size), device=device)
        arms[key] = (model, optimizer, x)
    rates: dict = {key: [] for key in arms}
    for _ in range(rounds):
        for key, (model, optimizer, x) in arms.items():
            start = time.perf_counter()
            for _ in range(steps):
                _, loss = model(x, x)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            rates[key].append(steps * x.numel() / (time.perf_counter() - start))
    return {key: statistics.median(r) for key, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="baseline")
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--rounds", type=int, default=7, help="throughput rounds")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value settings")
    args = parser.parse_args()

    registry = get_registry()
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"recipe {args.recipe} on {args.corpus}, {args.steps} steps, seed {args.seed}\n")

    def config(**change):
        overrides = {
            "corpus": args.corpus,
            "steps": args.steps,
            "seed": args.seed,
            "eval_every": 10**9,  # no evaluations during training: only the final score
            **dict(s.split("=", 1) for s in args.set),
            **change,
        }
        cfg = resolve(build_config(args.recipe, overrides), registry)
        return (cfg.attention, cfg.posemb), cfg

    base, _ = config()
    key_of, cfgs, runs = {}, {}, {}  # arm -> (attention, posemb) -> config, summary
    for slot, name in ARMS:
        key, cfg = config(**{slot: name})
        key_of[(slot, name)] = key
        if key in runs:  # the recipe's own choice, already run as another arm
            continue
        print(f"{slot} {name}")
        with tempfile.TemporaryDirectory() as out:
            cfgs[key] = cfg
            runs[key] = train(
                cfg, Path(out) / "run", registry=registry, log=lambda m: print(f"  {m}")
            )

    print(f"\nthroughput: {args.rounds} rounds of 20 steps, the arms taking turns")
    vocab = next(iter(runs.values()))["vocab_size"]
    speed = interleaved_throughput(cfgs, vocab, registry, args.rounds)

    print(
        f"\n{'slot':<10}{'name':<12}{'run tok/s':>10}{'tok/s':>9}{'ratio':>7}{'val_bpb':>9}{'Δ':>9}"
    )
    for slot, name in ARMS:
        key = key_of[(slot, name)]
        run = runs[key]
        print(
            f"{slot:<10}{name:<12}{run['tokens_per_s']:>10,.0f}{speed[key]:>9,.0f}"
            f"{speed[key] / speed[base]:>6.2f}x{run['val_bpb']:>9.4f}"
            f"{run['val_bpb'] - runs[base]['val_bpb']:>+9.4f}"
        )
    print(f"ratio and Δ val_bpb: against the {args.recipe} recipe itself ({' + '.join(base)})")


if __name__ == "__main__":
    sys.exit(main())
