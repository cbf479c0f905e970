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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kennethlm_core import precision, provenance, runlock
from kennethlm_core.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    save_weights,
    unique_state,
)
from kennethlm_core.components import Loop
from kennethlm_core.config import (
    RunConfig,
    component_names,
    logger_components,
)
from kennethlm_core.data import Batches, cache_root, format_mix, mix_weights, prepare_data
from kennethlm_core.device import describe_device, pick_device
from kennethlm_core.distributed import check_batch, threads_per_process
from kennethlm_core.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    NonFiniteLoss,
    WriteFailed,
)
from kennethlm_core.metric import bits_per_byte
from kennethlm_core.model import build_model, count_params
from kennethlm_core.plugins import get_registry
from kennethlm_core.provenance import git_commit
from kennethlm_core.rundir import (
    branch_source,
    check_run_dir,
    init_run_dir,
    read_metrics,
    snapshot_path,
    truncate_metrics,
)

# isort: split
# Moved to their own modules; kept importable from here for code written before the move.
from kennethlm_core.device import cpu_name  # noqa: F401
from kennethlm_core.rundir import RUN_FILES, load_run_config, resume_config  # noqa: F401

# torch.compile's compiled code is kept beside the token cache (unless the environment says
# where), so a second run does not compile again. Set on import: inductor fixes its folder
# the first time anything asks for it.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))


# -- the loop --------------------------------------------------------------------------------


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


def preflight(cfg: RunConfig, registry: Any) -> None:
    """Build the tokenizer and the model (on the meta device, no memory) so that a setting a
    component refuses fails now, before any data is read or any file written."""
    registry.get("tokenizer", cfg.tokenizer).factory(cfg)
    for logger in logger_components(cfg, registry):  # a logger's own checks (its library)
        logger.factory(cfg)
    with torch.device("meta"):
        params = count_params(build_model(cfg, 256, registry))
    need = params * 16  # float32 weights, gradients and two optimizer moments
    memory = _memory_bytes()
    if pick_device(cfg.device).type == "cpu" and memory and need > memory:
        raise ConfigError(
            f"the model has {params:,} parameters: training needs about {need / 1e9:,.0f} GB, "
            f"this machine has {memory / 1e9:,.0f} GB; use a smaller --n-embd or --n-layer"
        )


def _memory_bytes() -> int:
    """Physical memory of this machine (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


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
    from kennethlm_core import distributed

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


@dataclass
class Run:
    """A run while it trains: what it was given, what it built, and how far it is.

    ``start`` builds it (a new run, a resumed one, or one started from another run's
    checkpoint); the loop in ``_train`` moves it on with ``step`` and ``evaluate_and_save``;
    ``finish`` scores it and writes its summary.
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
        return _writing(what, self.clock.step, self.saved, self.out, self.dist.world)

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


def start(
    cfg: RunConfig,
    out: Path,
    dist: Any,
    registry: Any,
    resume: bool,
    force: bool,
    allow_changes: bool,
    init_from: str | Path | None,
    log: Callable[[str], None],
) -> Run:
    """Check everything that can be checked, prepare the data, write the run's first files,
    build the model, optimizer and callbacks, and restore a resumed (or branched) run's state."""
    source = branch_source(init_from, cfg) if init_from is not None else None
    preflight(cfg, registry)
    if not resume:
        check_run_dir(out, cfg, force)
    check_batch(cfg.batch_size, dist.world)
    if cfg.threads or dist.active:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
        torch.set_num_threads(cfg.threads or threads_per_process(local))
    device = pick_device(cfg.device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision.check(device, cfg.dtype)

    tokenizer = None
    if resume or source:  # the weights belong to this tokenizer
        tokenizer = registry.get("tokenizer", cfg.tokenizer).factory(cfg)
        tokenizer.load((source.parent if source else out) / "tokenizer")
    if resume:  # changed code or corpus: refuse before reading any data
        provenance.check_resume(out, provenance.planned_provenance(cfg, registry), allow_changes)
    with dist.main_first():  # rank 0 fills the token cache, the others then read it
        data = prepare_data(cfg, registry, tokenizer=tokenizer, log=log)
    mix = mix_weights(cfg.mix, data.train, cfg.block_size)
    cfg = cfg.replace(mix=format_mix(mix))  # config.json records the weights used
    origin = provenance.run_provenance(cfg, registry, data.meta)  # the code and data used
    changes = provenance.check_resume(out, origin, allow_changes) if resume else []
    if not resume and dist.is_main:
        with _writing("the run's first files", 0, None, out):
            init_run_dir(out, cfg)
            provenance.save(out, origin)
            data.tokenizer.save(out / "tokenizer")
    dist.barrier()  # the run folder exists before any rank reads from it

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.tokenizer.vocab_size, registry).to(device)
    optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    run = Run(
        cfg, out, dist, log, device, data, origin, model, optimizer,
        schedule=registry.get("schedule", cfg.schedule).factory(cfg),
        batches=Batches(
            data.train, cfg.block_size, cfg.batch_size, cfg.seed, device, list(mix.values())
        ),
        clock=Clock(), init_info=None,
    )  # fmt: skip
    run.loss_sum = torch.zeros((), device=device)
    meta = restore(run, resume, source, changes)
    run.loop = Loop(cfg, out, model, optimizer, run.clock, log, dist.is_main, resumed=resume)
    run.callbacks = {  # the run's callbacks, then its loggers (loggers.py)
        name: registry.get("callback", name).factory(cfg)
        for name in [*component_names(cfg.callback, "callback"), *component_names(cfg.logger)]
    }
    saved_state = meta.get("extra", {})  # each callback's tensors, under "NAME.KEY"
    for name, callback in run.callbacks.items():
        if resume:
            prefix = f"{name}."
            callback.load_state_dict(
                {k[len(prefix) :]: v for k, v in saved_state.items() if k.startswith(prefix)}
            )
        callback.started(run.loop)
    choose_precision(run, meta.get("precision") if resume else None)
    if resume and meta.get("grad_scaler"):
        run.scaler.load_state_dict(meta["grad_scaler"])
    run.step_fn = dist.wrap(model)  # DistributedDataParallel with several processes
    run.step_fn = torch.compile(run.step_fn) if cfg.compile else run.step_fn
    run.watch = LossWatch(device)
    return run


def restore(run: Run, resume: bool, source: Path | None, changes: list) -> dict[str, Any]:
    """A resumed run's weights, optimizer, clock, loss so far and random state from its
    checkpoint (or a branched run's from its source); return the checkpoint's metadata."""
    meta: dict[str, Any] = {}
    rng = None
    if resume:
        out, dist = run.out, run.dist
        if dist.is_main:  # temporary files of a write that a kill interrupted
            for stale in out.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        rng, meta = load_checkpoint(out / CHECKPOINT, run.model, run.optimizer)
        run.clock = Clock(meta["step"], meta["tokens"], meta["train_time_s"])
        run.loss_sum.fill_(meta.get("loss_sum", 0.0))
        run.loss_steps = meta.get("loss_steps", 0)
        run.init_info = meta.get("init_from")
        run.saved = run.clock.step
        if dist.is_main:
            with run.writing("metrics.jsonl or provenance.json"):
                truncate_metrics(run.metrics_path, run.clock.step)
                run.origin = provenance.resumed(out, run.origin, changes, run.clock.step)
        if changes:
            run.log(f"continuing although {provenance.sentence(changes)} (--allow-changes)")
        run.log(f"resuming {out} at step {run.clock.step}")
    elif source:
        run.clock, rng = start_from(
            source, run.cfg, run.model, run.optimizer, run.metrics_path, run.log, run.dist.is_main
        )
        run.init_info = {"checkpoint": str(source), "step": run.clock.step}
    if rng is not None:
        torch.set_rng_state(rng["torch"])
        if run.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        run.batches.set_state(rng["batches"])
    return meta


def choose_precision(run: Run, resumed: dict[str, Any] | None) -> None:
    """float32 or bf16 (--dtype auto: measured on a CPU); a resumed run keeps its precision."""
    cfg, device = run.cfg, run.device
    if resumed:
        chosen = precision.Precision(**resumed)
    else:
        chosen = precision.choose(
            device, cfg.dtype, run.model, (cfg.batch_size // run.dist.world, cfg.block_size),
            run.data.tokenizer.vocab_size,
        )  # fmt: skip
        if run.dist.active:  # every process trains in the same precision: rank 0's
            chosen = run.dist.broadcast(chosen)
    if cfg.dtype == "auto":
        run.log(f"precision: {chosen.dtype} ({chosen.reason})")
    run.chosen, run.autocast = chosen, chosen.autocast(device)
    run.scaler = precision.grad_scaler(device, chosen.dtype)  # a loss scale for float16


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


def shorter_rows(x: torch.Tensor, y: torch.Tensor, progress: float, warmup: float):
    """The sequence-length warm-up: during the first ``warmup`` of the budget each (B, T)
    batch is cut into rows of T/4, then T/2 tokens (the same tokens, each row attending only
    within itself); after it, the batch as it is."""
    if progress >= warmup:
        return x, y
    t = x.size(1) // (4 if progress < warmup / 2 else 2)
    return x.reshape(-1, t), y.reshape(-1, t)


def start_from(
    source: Path,
    cfg: RunConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    metrics_path: Path,
    log: Callable[[str], None],
    write: bool = True,
) -> tuple[Clock, dict[str, torch.Tensor] | None]:
    """Load another run's checkpoint into a new run; return its clock and random state.

    Weights are copied by name where the shapes agree; the others keep their fresh
    initialisation, so a candidate that adds or drops a tensor (RoPE drops the learned position
    table) can still start there. The optimizer state comes along when the model and the
    optimizer are the same, with this run's hyperparameters (lr, betas, ...). The clock and the
    metrics before that step continue from the source, so the trajectory is one line. The
    random state (data order, dropout) is the source's when the seeds agree, so the new run sees
    the batches the source saw next; with another seed (None) it comes from that seed.
    """
    src = json.loads((source.parent / "config.json").read_text())
    tensors, meta = read_checkpoint(source)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    own = unique_state(model)
    fits = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise CheckpointError(f"init_from {source}: none of its weights fit this model")
    if len(fits) == len(weights) == len(own) and src.get("optimizer") == cfg.optimizer:
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        load_checkpoint(source, model, optimizer)
        for group, values in zip(optimizer.param_groups, hyper, strict=True):
            group.update(values)
        log(f"starting from {source} at step {meta['step']}: weights and optimizer state")
    else:
        model.load_state_dict(fits, strict=False)
        new, dropped = sorted(set(own) - set(fits)), sorted(set(weights) - set(fits))
        log(
            f"starting from {source} at step {meta['step']}: {len(fits)} of {len(own)} tensors "
            f"(new: {', '.join(new) or 'none'}; dropped: {', '.join(dropped) or 'none'}), "
            "a fresh optimizer"
        )
    rows = [r for r in read_metrics(source.parent) if r["step"] < meta["step"]]
    if write:  # rank 0 only, with several processes
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
    rng = {k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")}
    clock = Clock(meta["step"], meta["tokens"], meta["train_time_s"])
    return clock, rng if src.get("seed") == cfg.seed else None


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
def _writing(what: str, step: int, saved: int | None, out: Path, world: int = 1):
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
