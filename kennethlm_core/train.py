"""The training loop.

One run: prepare the data, build the model from its slots, train until the budget (steps,
tokens or seconds of training) is spent, evaluating bits per byte on a fixed validation slice
every ``eval_every`` steps and checkpointing after each evaluation. The run folder gets
config.json, metrics.jsonl, checkpoint.safetensors, model.safetensors, tokenizer/ and
summary.json. ``train_time_s`` counts training steps only, never evaluation or start-up.

Misuse and bad luck stop a run in one line, never at the cost of its last good checkpoint: a
folder another process is training is refused (runlock.py); a training loss that turns NaN or
infinite stops the run at that step; weights that are not finite are never saved; a write
that fails (a full disk) keeps the previous checkpoint and says how to resume.

This module holds ``train`` and its loop (``step``); the run's state is ``runstate.Run``,
which ``runstart.start`` builds (checks, data, model, a resumed run's state) and ``runsave``
writes out (evaluations with their checkpoints, the weights and summary.json).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kennethlm_core import distributed, precision, runlock
from kennethlm_core.checkpoint import CHECKPOINT
from kennethlm_core.config import RunConfig
from kennethlm_core.errors import ConfigError, Interrupted
from kennethlm_core.plugins import get_registry
from kennethlm_core.rundir import snapshot_path
from kennethlm_core.runsave import checkpoint, evaluate_and_save, finish
from kennethlm_core.runstart import start
from kennethlm_core.runstate import Run

# isort: split
# Moved to their own modules; kept importable from here for code written before the move.
from kennethlm_core.device import cpu_name  # noqa: F401
from kennethlm_core.rundir import (  # noqa: F401
    RUN_FILES,
    load_run_config,
    read_metrics,
    resume_config,
)
from kennethlm_core.runstart import preflight  # noqa: F401
from kennethlm_core.runstate import LossWatch  # noqa: F401


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    registry: Any = None,
    resume: bool = False,
    force: bool = False,
    allow_changes: bool = False,
    init_from: str | Path | None = None,
    snapshot_at: int | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Any = None,
    on_eval: Callable[[dict[str, Any]], None] = lambda row: None,
) -> dict[str, Any]:
    """Train one run into folder ``out`` and return its summary.

    ``cfg`` must be resolved (config.resolve). ``init_from`` (a run folder or a checkpoint
    file) starts a new run from another run's state, see ``start_from``. ``snapshot_at`` keeps
    a copy of the checkpoint taken at that step (``snapshot_path``): a branch point for other
    runs. ``progress`` receives ``progress(clock, fraction, train_loss, val_bpb,
    tokens_per_s)`` every few steps; ``on_eval`` receives each row written to metrics.jsonl.

    The run's code and data go to provenance.json (provenance.py). A resumed run whose code or
    data changed since it started is refused, unless ``allow_changes``, which is recorded there.

    The run folder is locked while it trains (by rank 0 of several processes): another process
    training it is refused with its pid (runlock.py).
    """
    out = Path(out)
    dist = distributed.setup()  # multi-process (torchrun): see distributed.py; else inert
    lock = runlock.hold(out, "training this run") if dist.is_main else contextlib.nullcontext()
    with lock:
        return _train(
            cfg,
            out,
            dist,
            registry=registry,
            resume=resume,
            force=force,
            allow_changes=allow_changes,
            init_from=init_from,
            snapshot_at=snapshot_at,
            log=log,
            progress=progress,
            on_eval=on_eval,
        )


def _train(
    cfg: RunConfig,
    out: Path,
    dist: Any,
    *,
    registry: Any,
    resume: bool,
    force: bool,
    allow_changes: bool,
    init_from: str | Path | None,
    snapshot_at: int | None,
    log: Callable[[str], None],
    progress: Any,
    on_eval: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """train(), in its locked run folder: start, then evaluate and step until the budget is
    spent or a signal stops it, then finish."""
    registry = registry or get_registry()
    if resume and init_from is not None:
        raise ConfigError("a resumed run continues its own checkpoint; drop init_from")
    if resume and not (out / CHECKPOINT).exists():  # stopped before its first checkpoint
        log(f"{out} has no checkpoint yet: starting the run again")
        resume, force = False, True
    run = start(cfg, out, dist, registry, resume, force, allow_changes, init_from, log)
    val_slice = run.data.val.head(cfg.eval_bytes)
    # The first step's evaluation: a resumed run has it in metrics.jsonl already; a run started
    # from another run's checkpoint is evaluated where it starts, on or off the schedule.
    first_eval = False if resume else True if init_from is not None else None
    last_report = (run.clock.train_time, run.clock.tokens)
    with StopFlag() as stop:
        run.model.train()
        while True:
            finished = run.spent()
            if cfg.time:  # clocks differ between processes: stop when the first runs out
                finished = dist.any(finished, run.device)
            scheduled = run.clock.step % cfg.eval_every == 0 or finished
            if scheduled if first_eval is None else first_eval:
                evaluate_and_save(run, val_slice, on_eval)
            first_eval = None
            if run.clock.step == snapshot_at:
                checkpoint(run, snapshot_path(out, run.clock.step))
            if finished:
                break
            if dist.any(stop.signal is not None, run.device):  # all ranks stop at one step
                checkpoint(run)
                name = signal.Signals(stop.signal).name if stop.signal else "another process"
                raise Interrupted(
                    f"stopped by {name} at step {run.clock.step}; the "
                    f"checkpoint is saved. Continue with: klm run --resume {out}"
                    + (f" --nproc {dist.world}" if dist.active else "")
                )
            step(run)
            if progress is not None and dist.is_main and (run.clock.step % 10 == 0 or run.spent()):
                current = (run.loss_sum / max(1, run.loss_steps)).item()
                dt = run.clock.train_time - last_report[0]
                tps = (run.clock.tokens - last_report[1]) / dt if dt > 0 else 0.0
                last_report = (run.clock.train_time, run.clock.tokens)
                progress(run.clock, run.clock.progress(cfg), current, run.last_val, tps)
    return finish(run)


def step(run: Run) -> None:
    """One optimizer step on the next batch, timed; stops on a non-finite loss."""
    cfg, clock, optimizer, scaler = run.cfg, run.clock, run.optimizer, run.scaler
    t0 = time.perf_counter()
    multiplier = run.schedule(clock.step, clock.progress(cfg))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier
    x, y = run.dist.shard(*run.batches.next())  # each rank: its rows of the global batch
    if cfg.seq_warmup:
        x, y = shorter_rows(x, y, clock.progress(cfg), cfg.seq_warmup)
    with run.autocast:
        _, loss = run.step_fn(x, y)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)  # float16: skipped when the gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    run.loss_sum += loss.detach()
    run.loss_steps += 1
    diverged = run.watch.check(loss)
    if cfg.time:
        precision.synchronize(run.device)  # the time budget needs an honest clock
    clock.step += 1
    clock.tokens += cfg.batch_size * cfg.block_size
    clock.train_time += time.perf_counter() - t0
    if run.dist.any(diverged, run.device):  # every rank stops at the same step
        raise run.non_finite()
    run.loop.loss = loss.detach()
    for callback in run.callbacks.values():
        callback.stepped(run.loop)


def shorter_rows(x: torch.Tensor, y: torch.Tensor, progress: float, warmup: float):
    """The sequence-length warm-up: during the first ``warmup`` of the budget each (B, T)
    batch is cut into rows of T/4, then T/2 tokens (the same tokens, each row attending only
    within itself); after it, the batch as it is."""
    if progress >= warmup:
        return x, y
    t = x.size(1) // (4 if progress < warmup / 2 else 2)
    return x.reshape(-1, t), y.reshape(-1, t)


class StopFlag:
    """Turns SIGINT/SIGTERM into 'finish this step, checkpoint, exit'."""

    def __init__(self):
        self.signal: int | None = None
        self._at = 0.0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        # A second Ctrl-C stops at once. One within a second of the first is the same request
        # arriving twice (under torchrun: from the terminal and from torchrun).
        if self.signal is not None and time.monotonic() - self._at > 1.0:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal, self._at = signum, time.monotonic()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
