"""Kill a real `klm run` with SIGKILL at random moments, resume it each time, and count losses.

    python benchmarks/kill_loop.py [--kills 30] [--seed 0] [--keep DIR] [-- extra klm run flags]

The run checkpoints after every step (eval_every=1, a small evaluation slice), so a good share
of its time is spent writing checkpoints and many kills land in the middle of a write (seen
as a temporary file left in the run folder). After every kill the checkpoint must load (into
the model and optimizer of the run's config) and be at least as far as the last one seen;
then `klm run --resume` continues. The last resume runs to the end, and its metrics must equal,
exactly, those of the same run never killed. Prints: kills tried, kills during a checkpoint
write, checkpoints lost (the target is 0), resumes that worked, and whether the loss log
matched.

tests/test_faults.py runs the same loop with a few kills; this script runs it for longer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN_ARGS = [
    "--n-layer",
    "2",
    "--n-head",
    "2",
    "--n-embd",
    "64",
    "--block-size",
    "32",
    "--batch-size",
    "8",
    "--steps",
    "80",
    "--eval-every",
    "1",
    "--device",
    "cpu",
    "--set",
    "warmup_steps=5",
    "--set",
    "eval_bytes=256",
    "--set",
    "final_eval_bytes=2048",
    "--set",
    "threads=1",
    "-q",
]


def checkpoint_state(run: Path) -> int | None:
    """The step of the run's checkpoint, after loading it fully into the run's model and
    optimizer; None when there is none. Raises when it does not load."""
    import torch

    from kennethlm_core.checkpoint import CHECKPOINT, load_checkpoint
    from kennethlm_core.model import build_model
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.rundir import load_run_config

    if not (run / CHECKPOINT).exists():
        return None
    registry = get_registry()
    cfg = load_run_config(run, registry)
    tok = registry.get("tokenizer", cfg.tokenizer).factory(cfg)
    tok.load(run / "tokenizer")
    model = build_model(cfg, tok.vocab_size, registry)
    optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
    _, meta = load_checkpoint(run / CHECKPOINT, model, optimizer)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return int(meta["step"])


def losses(run: Path) -> list[tuple]:
    from kennethlm_core.rundir import read_metrics

    return [(r["step"], r["lr"], r["train_loss"], r["val_bpb"]) for r in read_metrics(run)]


def finished(run: Path, args: list[str]) -> bool:
    """The run ended, at the step its budget asked for."""
    summary = json.loads((run / "summary.json").read_text())
    return summary["steps"] == int(args[args.index("--steps") + 1])


def kill_loop(
    folder: Path,
    kills: int,
    seed: int = 0,
    args: list[str] | None = None,
    window: float = 0.5,
    steps: int | None = None,
    log=lambda msg: None,
) -> dict:
    """SIGKILL a run ``kills`` times at random moments, resuming after each; then finish it and
    compare with an uninterrupted run. Returns the figures."""
    from kennethlm_core.checkpoint import CHECKPOINT
    from kennethlm_core.cli import main

    args = list(args or RUN_ARGS)
    if steps is not None:
        args[args.index("--steps") + 1] = str(steps)
    rng = random.Random(seed)
    run, straight = folder / "killed", folder / "straight"
    figures = {
        "kills": 0,
        "kills_during_write": 0,
        "checkpoints_lost": 0,
        "resumes": 0,
        "resumes_ok": 0,
        "finished_before_kill": 0,
    }
    last_step = None
    for attempt in range(kills + 1):
        resume = (run / "config.json").exists()
        what = ["--resume", str(run), "-q"] if resume else [*args, "--out", str(run)]
        cmd = [sys.executable, "-m", "kennethlm_core", "run", *what]
        before = (run / CHECKPOINT).stat().st_mtime_ns if (run / CHECKPOINT).exists() else None
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        figures["resumes"] += resume
        start = last_step  # a resume must go on from here
        if attempt == kills:
            err = proc.communicate()[1].decode()
            if proc.returncode != 0:
                raise RuntimeError(f"the last resume failed: {err[-2000:]}")
            figures["resumes_ok"] += resume and finished(run, args)
            break
        # wait for this process to write a checkpoint of its own, then kill at a random moment
        while proc.poll() is None:
            path = run / CHECKPOINT
            if path.exists() and path.stat().st_mtime_ns != before:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, window))
        if proc.poll() is not None:  # it finished first: start another round
            figures["finished_before_kill"] += 1
            if proc.returncode != 0:
                raise RuntimeError(f"run failed: {proc.stderr.read().decode()[-2000:]}")
            figures["resumes_ok"] += resume and finished(run, args)
            for name in ("summary.json", "model.safetensors"):
                (run / name).unlink(missing_ok=True)
            continue
        proc.kill()
        proc.wait()
        proc.stderr.close()
        figures["kills"] += 1
        in_write = any(run.glob(f".{CHECKPOINT}.*.tmp"))
        figures["kills_during_write"] += in_write
        try:
            step = checkpoint_state(run)
        except Exception as e:  # noqa: BLE001 - any failure to load is a lost checkpoint
            log(f"kill {figures['kills']}: checkpoint does not load: {e}")
            step = None
        if step is None or (last_step is not None and step < last_step):
            figures["checkpoints_lost"] += 1
        else:
            last_step = step
        # a resume worked when it wrote a loadable checkpoint beyond the one it started from
        figures["resumes_ok"] += resume and step is not None and step > (start or 0)
        log(
            f"kill {figures['kills']}: checkpoint at step {step}"
            + (" (killed during a checkpoint write)" if in_write else "")
        )
    try:
        main(["run", *args, "--out", str(straight)])
    except SystemExit as e:
        if e.code:
            raise
    figures["same_losses_as_uninterrupted"] = losses(run) == losses(straight)
    figures["final_val_bpb"] = json.loads((run / "summary.json").read_text())["val_bpb"]
    figures["final_val_bpb_uninterrupted"] = json.loads((straight / "summary.json").read_text())[
        "val_bpb"
    ]
    return figures


def main_cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=float, default=0.5, help="seconds after a checkpoint")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--keep", type=Path, help="keep the run folders here")
    ns, extra = p.parse_known_args()
    args = RUN_ARGS + [a for a in extra if a != "--"]
    folder = ns.keep or Path(tempfile.mkdtemp(prefix="klm-kill-loop-"))
    os.environ.setdefault("KLM_CACHE", str(folder / "cache"))
    t0 = time.perf_counter()
    figures = kill_loop(folder, ns.kills, ns.seed, args, ns.window, ns.steps, log=print)
    print(json.dumps(figures, indent=1))
    print(
        f"kills tried {figures['kills']}, during a checkpoint write {figures['kills_during_write']}"
        f", checkpoints lost {figures['checkpoints_lost']}, resumes that worked "
        f"{figures['resumes_ok']} of {figures['resumes']}, losses equal to an uninterrupted run: "
        f"{figures['same_losses_as_uninterrupted']} ({time.perf_counter() - t0:.0f}s)"
    )


if __name__ == "__main__":
    main_cli()
