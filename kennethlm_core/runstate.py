"""A training run's state: ``Run`` (what it was given, what it built, how far it is: its
``Clock``) and what the loop asks of it: whether the budget is spent, the score of a split,
and a non-finite loss or a failed write stopping the run in one line (``writing``);
``LossWatch`` notices a non-finite loss without making a GPU wait.

``runstart.start`` builds a Run, the loop in ``train.py`` moves it on, ``runsave`` writes
what it has done.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kennethlm_core import precision
from kennethlm_core.components import Loop
from kennethlm_core.config import RunConfig
from kennethlm_core.data import Batches
from kennethlm_core.errors import NonFiniteLoss, WriteFailed
from kennethlm_core.metric import bits_per_byte


@dataclass
class Clock:
    step: int = 0
    tokens: int = 0
    train_time: float = 0.0

    def progress(self, cfg: RunConfig) -> float:
        """Fraction of the budget used: the largest over the limits that are set."""
        used = [
            self.step / cfg.steps if cfg.steps else 0.0,
            self.tokens / cfg.tokens if cfg.tokens else 0.0,
            self.train_time / cfg.time if cfg.time else 0.0,
        ]
        return min(1.0, max(used))


@dataclass
class Run:
    """A run while it trains: what it was given, what it built, and how far it is.

    ``runstart.start`` builds it (a new run, a resumed one, or one started from another
    run's checkpoint); the loop in ``train._train`` moves it on with ``step`` and
    ``runsave.evaluate_and_save``; ``runsave.finish`` scores it and writes its summary.
    """

    cfg: RunConfig
    out: Path
    dist: Any  # distributed.Setup: inert with one process
    log: Callable[[str], None]
    device: torch.device
    data: Any  # data.Prepared: the tokenizer and the token splits
    origin: dict[str, Any]  # provenance: the code and data this run uses
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int, float], float]
    batches: Batches
    clock: Clock
    init_info: dict[str, Any] | None  # where a run started from another run's checkpoint
    callbacks: dict[str, Any] = field(default_factory=dict)
    loop: Loop | None = None  # what callbacks see
    chosen: precision.Precision | None = None
    autocast: Any = None
    scaler: Any = None
    step_fn: Callable = None  # the model's forward, wrapped (DDP) and compiled as asked
    saved: int | None = None  # the step of the checkpoint in the run folder
    loss_sum: torch.Tensor | None = None  # training loss since the last evaluation
    loss_steps: int = 0
    last_val: float = float("nan")
    watch: LossWatch | None = None

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def spent(self) -> bool:
        """Whether this process has used the budget (steps, tokens or time)."""
        cfg, clock = self.cfg, self.clock
        return bool(
            (cfg.steps and clock.step >= cfg.steps)
            or (cfg.tokens and clock.tokens >= cfg.tokens)
            or (cfg.time and clock.train_time >= cfg.time)
        )

    def non_finite(self, what: str = "the training loss") -> NonFiniteLoss:
        return _non_finite(self.clock, self.saved, self.cfg, self.out, what)

    def writing(self, what: str):
        return writing(what, self.clock.step, self.saved, self.out, self.dist.world)

    def evaluating(self) -> contextlib.ExitStack:
        """Every callback's context for an evaluation (an EMA's weights swapped in)."""
        stack = contextlib.ExitStack()
        for callback in self.callbacks.values():
            stack.enter_context(callback.evaluating(self.loop))
        return stack

    def score(self, split) -> Any:
        """Bits per byte of ``split`` with the weights a callback evaluates."""
        cfg = self.cfg
        return bits_per_byte(
            self.model,
            split,
            cfg.block_size,
            self.data.tokenizer.doc_id,
            self.device,
            autocast=self.autocast,
            stride=cfg.eval_stride,
        )


class LossWatch:
    """Notices a training loss that is NaN or infinite at every step, without making a GPU wait.

    On a CPU (and MPS) the loss is read at once: ``check`` answers for this step. Reading a
    CUDA tensor waits for every kernel queued before it, a stall at every step; there the
    check is copied to pinned host memory asynchronously and read a step later, when the GPU
    is done with it and the next step is already queued: ``check`` answers for the step
    before. (Evaluations and checkpoints read the loss and the weights themselves, so nothing
    non-finite is evaluated or saved in that step.)
    """

    def __init__(self, device: torch.device):
        self.lagged = device.type == "cuda"
        self.steps = 0
        if self.lagged:
            self.flags = torch.zeros(2, dtype=torch.bool, pin_memory=True)
            self.copied = [torch.cuda.Event(), torch.cuda.Event()]

    def check(self, loss: torch.Tensor) -> bool:
        """Whether the loss of this step (on CUDA: of the step before) is not finite."""
        if not self.lagged:
            return not math.isfinite(loss.item())
        now, before = self.steps % 2, (self.steps + 1) % 2
        self.flags[now].copy_(~torch.isfinite(loss.detach()), non_blocking=True)
        self.copied[now].record()
        self.steps += 1
        if self.steps == 1:
            return False
        self.copied[before].synchronize()  # the step before's copy: done long ago
        return bool(self.flags[before])


def _non_finite(
    clock: Clock, last_good: int | None, cfg: RunConfig, out: Path, what: str = "the training loss"
) -> NonFiniteLoss:
    tries = [f"a lower --lr (now {cfg.lr:g})"]
    if not cfg.grad_clip:
        tries.append("--set grad_clip=1.0")
    if cfg.dtype != "float32":
        tries.append("--dtype float32")
    kept = (
        f"the last good checkpoint (step {last_good}) is kept in {out}"
        if last_good is not None
        else "nothing was saved"
    )
    return NonFiniteLoss(
        f"{what} became non-finite by step {clock.step}; {kept}. Try {' or '.join(tries)}, "
        "then start again with --force (--resume would continue from that checkpoint with the "
        "same settings)"
    )


@contextlib.contextmanager
def writing(what: str, step: int, saved: int | None, out: Path, world: int = 1):
    """A write of ``what`` that fails (a full disk, a file-size limit) stops the run in one
    line. The writes are atomic, so the files there, the checkpoint included, are kept."""
    try:
        yield
    except OSError as e:
        again = f"klm run --resume {out}" + (f" --nproc {world}" if world > 1 else "")
        kept = (
            f"the previous checkpoint (step {saved}) is kept in {out}. Free some space, then "
            f"continue with: {again}"
            if saved is not None
            else "no checkpoint was written yet. Free some space, then start the run again"
        )
        raise WriteFailed(
            f"could not write {what} at step {step} ({e.strerror or e}); {kept}"
        ) from None
