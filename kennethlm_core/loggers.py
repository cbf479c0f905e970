"""Loggers: experiment trackers (TensorBoard, Weights & Biases, ...) on the callback slot.

A logger is a training-loop callback that only watches the run. It registers in the callback
slot with ``logger=True``, and a run lists it with ``--logger NAME`` (repeatable; in a recipe
or ``--set``: ``logger = "tensorboard,wandb"``)::

    @hookimpl
    def klm_register_callback(register):
        register("tensorboard", TensorBoard, "event files in the run folder", logger=True)

Subclass ``Logger``: it turns the loop's hooks into four calls a tracker implements,

    open(run)              start the tracker; ``run`` is a RunInfo: the config (hparams),
                           the run's name, folder, group, arm and seed
    scalars(values, step)  numbers at a training step: every ``log_every`` steps
                           train/loss (the mean over those steps), train/lr and
                           train/tokens_per_s; at every evaluation eval/<key> for each key of
                           the row written to metrics.jsonl (val_bpb, train_loss, lr, ...)
    summarize(values)      summary.json at the end, flattened: val_bpb,
                           val_bpb_by_domain/news, val_bpb_ci/0, tokens_per_s, device, ...
    close()                flush and stop

and does the rest: only the first process of a multi-process run logs; the training loss is
summed on the device and read once a point; and a tracker that raises, when it starts or
later, is dropped with one warning (LoggerWarning) while the run goes on without it. Its
factory must be cheap and start nothing (``klm run`` builds it once to check the settings
before any data is read): the tracker starts in ``open``.

Loggers are WATCHING settings (runconfig.py): not part of what a run computes, so a finished
run is reused by ``klm compare`` whatever its loggers, and ``--resume`` may add one.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kennethlm_core.components import Callback, Loop


class LoggerWarning(UserWarning):
    """A logger stopped (or never started); the run goes on without it."""


@dataclass
class RunInfo:
    """What a tracker is told about the run when it starts."""

    folder: Path
    name: str  # "baseline seed 1" in a comparison, else the run folder's name
    hparams: dict[str, Any]  # config.json's settings
    group: str = ""  # the comparison (its experiment folder's name), or --set group=...
    arm: str = ""  # baseline or candidate, in a comparison
    seed: int = 0
    step: int = 0  # where the run starts: 0, or the step a resumed or branched run continues at
    resumed: bool = False
    tags: list[str] = field(default_factory=list)  # the arm and "seed-N"


class Logger(Callback):
    """A callback that sends a run's figures to an experiment tracker (see the module)."""

    name = "logger"  # the registered name, for the warning when the tracker fails

    def __init__(self) -> None:
        self.live = False  # started, and not failed since
        self.opened = False
        self._loss_sum: torch.Tensor | None = None  # training loss since the last point
        self._loss_steps = 0
        self._last = (0.0, 0)  # (train_time, tokens) at the last point

    # -- what a tracker implements -------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        raise NotImplementedError

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def summarize(self, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    # -- the loop's hooks ----------------------------------------------------------------

    def started(self, loop: Loop) -> None:
        if not loop.is_main:
            return
        self.live = True
        if not self._loss_steps:  # a resumed run restored these (load_state_dict)
            self._last = (loop.clock.train_time, loop.clock.tokens)
        self._safely(loop, self.open, run_info(loop))
        self.opened = self.live

    def stepped(self, loop: Loop) -> None:
        if not self.live or loop.loss is None:
            return
        if self._loss_sum is None:
            self._loss_sum = torch.zeros((), device=loop.loss.device)
        elif self._loss_sum.device != loop.loss.device:  # restored from a checkpoint, on the CPU
            self._loss_sum = self._loss_sum.to(loop.loss.device)
        self._loss_sum += loop.loss.detach()  # as the trainer sums it, so the means agree
        self._loss_steps += 1
        if loop.clock.step % loop.cfg.log_every == 0:
            self._safely(loop, self._point, loop)

    def _point(self, loop: Loop) -> None:
        clock = loop.clock
        values = {
            "train/loss": (self._loss_sum / self._loss_steps).item(),
            "train/lr": loop.optimizer.param_groups[0]["lr"],
        }
        seconds = clock.train_time - self._last[0]
        if seconds > 0:
            values["train/tokens_per_s"] = (clock.tokens - self._last[1]) / seconds
        self._loss_sum.zero_()
        self._loss_steps = 0
        self._last = (clock.train_time, clock.tokens)
        self.scalars(values, clock.step)

    def evaluated(self, loop: Loop, row: dict[str, Any]) -> None:
        values = {f"eval/{k}": v for k, v in row.items() if k != "step" and v is not None}
        self._safely(loop, self.scalars, values, row["step"])

    def finished(self, loop: Loop, summary: dict[str, Any]) -> None:
        self._safely(loop, self.summarize, flatten(summary))
        self._safely(loop, self.close)
        self.live = False

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running loss and the clock at the last point, so that a resumed run's first
        point averages the same steps as an uninterrupted run's."""
        loss = self._loss_sum.detach().cpu() if self._loss_sum is not None else torch.zeros(())
        return {
            "loss_sum": loss.clone(),
            "loss_steps": torch.tensor(self._loss_steps),
            "last": torch.tensor(self._last, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "loss_steps" not in state:  # a logger added when resuming: nothing to restore
            return
        self._loss_sum = state["loss_sum"].clone()
        self._loss_steps = int(state["loss_steps"])
        self._last = (float(state["last"][0]), int(state["last"][1]))

    def _safely(self, loop: Loop, call: Any, *args: Any) -> None:
        """Call the tracker; if it raises, warn once and stop logging."""
        if not self.live:
            return
        try:
            call(*args)
        except Exception as e:
            self.live = False
            what = f"stopped at step {loop.clock.step}" if self.opened else "could not start"
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            warnings.warn(
                f"logger '{self.name}' {what} ({reason}); the run goes on without it",
                LoggerWarning,
                stacklevel=2,
            )
            with contextlib.suppress(Exception):
                self.close()


def run_info(loop: Loop) -> RunInfo:
    cfg = loop.cfg
    name = f"{cfg.arm} seed {cfg.seed}" if cfg.arm else Path(loop.out).name
    return RunInfo(
        folder=Path(loop.out),
        name=name,
        hparams=cfg.to_dict(),
        group=cfg.group,
        arm=cfg.arm,
        seed=cfg.seed,
        step=loop.clock.step,
        resumed=loop.resumed,
        tags=[t for t in (cfg.arm, f"seed-{cfg.seed}") if t],
    )


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """summary.json as one level of numbers and strings: {"val_bpb_by_domain/news": 3.4, ...}.
    ``provenance`` (file hashes) is left out: it is in the run folder."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if name == "provenance" or value is None:
            continue
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, list | tuple):
            flat.update(flatten(dict(enumerate(value)), f"{name}/"))
        else:
            flat[name] = value
    return flat
