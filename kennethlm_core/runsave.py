"""What a training run writes as it goes: at each evaluation the validation score, a row
of metrics.jsonl and the checkpoint (``evaluate_and_save``, ``checkpoint``); at the end the
weights, the full validation score and summary.json (``finish``). Weights that are not
finite are never saved.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    save_checkpoint,
    save_weights,
)
from kennethlm_core.device import describe_device
from kennethlm_core.model import count_params
from kennethlm_core.provenance import git_commit
from kennethlm_core.runstate import Clock, Run


def evaluate_and_save(run: Run, val_slice: Any, on_eval: Callable[[dict], None]) -> None:
    """Score the validation slice, append a metrics row (rank 0), and checkpoint."""
    mean_loss = run.dist.mean(run.loss_sum / max(1, run.loss_steps))  # over ranks
    train_loss = mean_loss.item() if run.loss_steps else float("nan")
    if run.loss_steps and not math.isfinite(train_loss):
        raise run.non_finite()
    if not _finite(run.model):
        raise run.non_finite("the weights")
    if run.dist.is_main:
        with run.evaluating():
            run.last_val = run.score(val_slice).bpb
        lr = run.optimizer.param_groups[0]["lr"]
        with run.writing(run.metrics_path.name):
            row = _append_metrics(run.metrics_path, run.clock, lr, train_loss, run.last_val)
        on_eval(row)
        for callback in run.callbacks.values():
            callback.evaluated(run.loop, row)
    run.loss_sum.zero_()
    run.loss_steps = 0
    checkpoint(run)


def checkpoint(run: Run, path: Path | None = None) -> None:
    """Save the training state (rank 0 writes); refused for weights that are not finite."""
    path = path or run.out / CHECKPOINT
    if not _finite(run.model):  # checked on every rank, so that all stop together
        raise run.non_finite("the weights")
    if run.dist.is_main:
        rng = {"torch": torch.get_rng_state(), "batches": run.batches.state()}
        if run.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        meta = {
            "step": run.clock.step,
            "tokens": run.clock.tokens,
            "train_time_s": run.clock.train_time,
            "loss_sum": run.loss_sum.item(),
            "loss_steps": run.loss_steps,
            "init_from": run.init_info,
            "precision": run.chosen.to_json(),
        }
        if run.scaler.is_enabled():
            meta["grad_scaler"] = run.scaler.state_dict()
        extra = {
            f"{name}.{key}": t
            for name, callback in run.callbacks.items()
            for key, t in callback.state_dict().items()
        }
        with run.writing(path.name):
            save_checkpoint(path, run.model, run.optimizer, rng, meta, extra)
    if path == run.out / CHECKPOINT:
        run.saved = run.clock.step


def finish(run: Run) -> dict[str, Any]:
    """Save the weights, score the validation split, write summary.json (rank 0)."""
    cfg, dist, clock = run.cfg, run.dist, run.clock
    if not dist.is_main:  # rank 0 scores the run and writes its files; the others wait, so
        dist.barrier()  # that every process leaves the process group at the same time
        return {}
    final_slice = run.data.val.head(cfg.final_eval_bytes)
    with run.evaluating():  # the weights a callback evaluates (an EMA's) are the run's model
        with run.writing(WEIGHTS):
            save_weights(run.model, run.out / WEIGHTS)
        run.log("scoring the validation split")
        final = run.score(final_slice)
    summary = {
        "val_bpb": final.bpb,
        "val_bpb_ci": final.ci(),
        "val_bpb_by_domain": final.by_domain,
        "val_bytes": final_slice.n_bytes,
        "val_documents": len(final.doc_bytes),
        "params": count_params(run.model),
        "steps": clock.step,
        "tokens_seen": clock.tokens,
        "train_time_s": clock.train_time,
        "tokens_per_s": clock.tokens / clock.train_time if clock.train_time else 0.0,
        "device": describe_device(run.device)
        + (f" x {dist.world} processes" if dist.active else ""),
        "dtype": run.chosen.dtype,
        "precision": run.chosen.to_json(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "vocab_size": run.data.tokenizer.vocab_size,
        "train_tokens": len(run.data.train.tokens),
        "init_from": run.init_info,
        "provenance": run.origin,
    }
    with run.writing("summary.json"):
        atomic_write_json(run.out / "summary.json", summary)
    for callback in run.callbacks.values():
        callback.finished(run.loop, summary)
    dist.barrier()
    return summary


def _finite(model: torch.nn.Module) -> bool:
    """Whether every weight is finite (one read from the device, however many tensors)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def _append_metrics(path: Path, clock: Clock, lr: float, train_loss: float, val_bpb: float) -> dict:
    row = {
        "step": clock.step,
        "tokens": clock.tokens,
        "train_time_s": round(clock.train_time, 4),
        "lr": lr,
        "train_loss": None if math.isnan(train_loss) else train_loss,
        "val_bpb": val_bpb,
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return row
