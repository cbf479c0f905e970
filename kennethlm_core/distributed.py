"""Multi-process training: the small part of KennethLM that knows about several processes.

``torchrun --nproc-per-node N -m kennethlm_core run ...`` (or ``klm run --nproc N``, which
launches exactly that) starts N copies of ``klm run``; torchrun tells each its rank through
the environment (RANK, WORLD_SIZE, LOCAL_RANK). They train one model with
DistributedDataParallel: gloo on CPU, nccl on GPUs.

The rules, so that N processes train the run one process would:

- every rank draws the same global batch from the same generator (same seed) and keeps its
  own rows of it (``Dist.shard``): rank r gets rows r*B/N .. (r+1)*B/N of the B rows;
- DDP averages the gradients over ranks, so each step applies the gradient of the mean loss
  over the whole global batch, as one process would (up to the order of float additions);
- only rank 0 writes files (config, tokenizer, metrics, checkpoints, summary) and evaluates;
  the training loss it logs is the mean over ranks;
- a stop (Ctrl-C, SIGTERM) is agreed on by all ranks at the same step (``Dist.any``).

With one process (no torchrun) ``Dist`` is inert: every method is the identity.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel

from kennethlm_core.errors import ConfigError
from kennethlm_core.provenance import child_env


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x, y):
        """This rank's rows of the global batch (x, y)."""
        if not self.active:
            return x, y
        n = x.shape[0] // self.world
        return x[self.rank * n : (self.rank + 1) * n], y[self.rank * n : (self.rank + 1) * n]

    def wrap(self, model):
        """The module to call for training steps: DDP around the model when active."""
        if not self.active:
            return model
        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value):
        """The mean of a tensor over ranks (the tensor itself with one process)."""
        if not self.active:
            return value
        value = value.clone()
        td.all_reduce(value, op=td.ReduceOp.SUM)
        return value / self.world

    def any(self, flag: bool, device) -> bool:
        """Whether ``flag`` is true on any rank; every rank gets the same answer."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        td.all_reduce(value, op=td.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (filling caches); the others run it after."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


_current: Dist | None = None


def setup() -> Dist:
    """The process's place in a torchrun job; joins the process group on first call."""
    global _current
    if _current is not None:
        return _current
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _current = Dist()
        return _current
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if not td.is_initialized():
        td.init_process_group(backend)
        # leave the group before the interpreter tears down: a gloo process group still alive
        # then can abort the process ("terminate called without an active exception")
        atexit.register(_leave)
    _current = Dist(rank, world, local_rank)
    return _current


def _leave() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def check_batch(batch_size: int, world: int) -> None:
    if batch_size % world:
        lower = batch_size - batch_size % world
        raise ConfigError(
            f"batch_size {batch_size} cannot be split evenly over {world} processes; "
            f"use --batch-size {lower or world} or {lower + world}"
        )


def threads_per_process(nproc: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // nproc)


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``klm`` with ``args`` in ``nproc`` processes through torchrun; its exit code.

    torchrun runs in a session of its own, so a Ctrl-C reaches the workers once, through
    torchrun (which passes SIGINT/SIGTERM on to them), not a second time from the terminal.
    """
    env = child_env()  # the ranks run this process's code, whatever the working directory
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "kennethlm_core",
        *args,
    ]
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    stopped = []

    def forward(signum, frame):
        stopped.append(signum)
        proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 130 if stopped else code  # stopped: the workers checkpointed (torchrun says 1)
