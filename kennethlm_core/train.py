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
import platform
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    BUDGET_KEYS,
    WATCHING,
    RunConfig,
    coerce,
    component_names,
    logger_components,
    resolve,
    same_config,
)
from kennethlm_core.data import Batches, cache_root, format_mix, mix_weights, prepare_data
from kennethlm_core.distributed import check_batch, threads_per_process
from kennethlm_core.errors import CheckpointError, ConfigError, KLMError
from kennethlm_core.evaluate import bits_per_byte
from kennethlm_core.model import build_model, count_params
from kennethlm_core.provenance import git_commit

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    CHECKPOINT,
    WEIGHTS,
    "summary.json",
    "tokenizer",
    provenance.FILE,
)


# torch.compile's compiled code is kept beside the token cache (unless the environment says
# where), so a second run does not compile again. Set on import: inductor fixes its folder
# the first time anything asks for it.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))


class Interrupted(KLMError):
    """Training was stopped by a signal after writing a checkpoint."""


class NonFiniteLoss(KLMError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


class WriteFailed(KLMError):
    """A run file could not be written (a full disk, a file-size limit); the previous
    checkpoint is kept."""


# -- devices and precision ---------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for, but torch sees no CUDA GPU; use --device auto"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but MPS is not available; use --device auto")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads, {cpu_name()})"
    return device.type


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- run folders -----------------------------------------------------------------------------


def load_run_config(run_dir: Path, registry: Any) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(
            f"{run_dir} is not a run folder (no config.json); give a folder made by klm run"
        )
    try:
        cfg = RunConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a valid run config ({e}); restore it from a copy"
        ) from None
    return resolve(cfg, registry)


def check_run_dir(out: Path, cfg: RunConfig, force: bool) -> None:
    """A new run may go into a missing or empty folder; replacing an existing run needs --force.

    Only checks: nothing is written until the data is ready, so a failed start leaves no trace.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if not out.exists() or not any(out.iterdir()) or force and (out / "config.json").exists():
        return
    existing = out / "config.json"
    if not existing.exists():
        raise ConfigError(
            f"--out {out} is a non-empty folder that is not a run; choose another --out"
        )
    try:
        same = same_config(json.loads(existing.read_text()), cfg)
    except json.JSONDecodeError:
        same = False
    what = "this configuration" if same else "another configuration"
    raise ConfigError(
        f"--out {out} already holds a run of {what}; use --resume {out} to continue it, "
        "--force to replace it, or another --out"
    )


def init_run_dir(out: Path, cfg: RunConfig) -> None:
    """Clear the files of a replaced run (--force) and write config.json."""
    for name in (*RUN_FILES, "eval.json"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for path in out.glob("checkpoint-*.safetensors"):  # snapshots (snapshot_at)
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())


def resume_config(out: Path, overrides: dict[str, Any], registry: Any) -> RunConfig:
    """The saved config of ``out``; only the budget may change when resuming.

    A run stopped before its first checkpoint resumes by starting again (train does that).
    """
    if not (out / "config.json").exists():
        raise CheckpointError(
            f"--resume {out}: not a run folder (no config.json); give a folder made by klm run"
        )
    cfg = load_run_config(out, registry)
    overrides = {k: coerce(k, v, cfg.get(k)) for k, v in overrides.items()}
    free = (*BUDGET_KEYS, *WATCHING)  # the budget, and how the run is watched (--logger)
    changed = {k for k, v in overrides.items() if k not in free and cfg.get(k) != v}
    if changed:
        raise ConfigError(
            f"cannot change {', '.join(sorted(changed))} when resuming; only the budget "
            "(--steps, --tokens, --time) and the loggers may change. Start a new run for a new "
            "configuration"
        )
    if any(k in overrides for k in BUDGET_KEYS):
        cfg = cfg.replace(**{k: overrides.get(k, 0) for k in BUDGET_KEYS})
    watching = {k: v for k, v in overrides.items() if k in WATCHING}
    if watching:
        cfg = resolve(cfg.replace(**watching), registry)
    return cfg


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
    """train(), in its locked run folder."""
    from kennethlm_core.plugins import get_registry

    registry = registry or get_registry()
    if resume and init_from is not None:
        raise ConfigError("a resumed run continues its own checkpoint; drop init_from")
    if resume and not (out / CHECKPOINT).exists():  # stopped before its first checkpoint
        log(f"{out} has no checkpoint yet: starting the run again")
        resume, force = False, True
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
    tokenizer = data.tokenizer
    mix = mix_weights(cfg.mix, data.train, cfg.block_size)
    cfg = cfg.replace(mix=format_mix(mix))  # config.json records the weights used
    origin = provenance.run_provenance(cfg, registry, data.meta)  # the code and data used
    changes = provenance.check_resume(out, origin, allow_changes) if resume else []
    if not resume and dist.is_main:
        with _writing("the run's first files", 0, None, out):
            init_run_dir(out, cfg)
            provenance.save(out, origin)
            tokenizer.save(out / "tokenizer")
    dist.barrier()  # the run folder exists before any rank reads from it
    val_slice = data.val.head(cfg.eval_bytes)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer.vocab_size, registry).to(device)
    optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    schedule = registry.get("schedule", cfg.schedule).factory(cfg)
    batches = Batches(
        data.train, cfg.block_size, cfg.batch_size, cfg.seed, device, list(mix.values())
    )
    clock = Clock()
    metrics_path = out / "metrics.jsonl"
    init_info = None  # where a run started from another run's checkpoint: {checkpoint, step}
    rng: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = {}

    if resume:
        if dist.is_main:  # temporary files of a write that a kill interrupted
            for stale in out.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        rng, meta = load_checkpoint(out / CHECKPOINT, model, optimizer)
        clock = Clock(meta["step"], meta["tokens"], meta["train_time_s"])
        loss_sum_saved, loss_steps_saved = meta.get("loss_sum", 0.0), meta.get("loss_steps", 0)
        init_info = meta.get("init_from")
        if dist.is_main:
            step = clock.step
            with _writing("metrics.jsonl or provenance.json", step, step, out, dist.world):
                _truncate_metrics(metrics_path, clock.step)
                origin = provenance.resumed(out, origin, changes, clock.step)  # the overrides
        if changes:
            log(f"continuing although {provenance.sentence(changes)} (--allow-changes)")
        log(f"resuming {out} at step {clock.step}")
    elif source:
        clock, rng = start_from(source, cfg, model, optimizer, metrics_path, log, dist.is_main)
        init_info = {"checkpoint": str(source), "step": clock.step}
    if rng is not None:
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        batches.set_state(rng["batches"])
    loop = Loop(cfg, out, model, optimizer, clock, log, dist.is_main, resumed=resume)
    callbacks = {  # the run's callbacks, then its loggers (loggers.py)
        name: registry.get("callback", name).factory(cfg)
        for name in [*component_names(cfg.callback, "callback"), *component_names(cfg.logger)]
    }
    saved_state = meta.get("extra", {})  # each callback's tensors, under "NAME.KEY"
    for name, callback in callbacks.items():
        if resume:
            mine = {
                k.split(".", 1)[1]: v for k, v in saved_state.items() if k.startswith(f"{name}.")
            }
            callback.load_state_dict(mine)
        callback.started(loop)

    # float32 or bf16 (--dtype auto: measured on a CPU). A resumed run keeps its precision.
    if resume and meta.get("precision"):
        chosen = precision.Precision(**meta["precision"])
    else:
        chosen = precision.choose(
            device, cfg.dtype, model, (cfg.batch_size // dist.world, cfg.block_size),
            tokenizer.vocab_size,
        )  # fmt: skip
        if dist.active:  # every process trains in the same precision: rank 0's
            chosen = dist.broadcast(chosen)
    autocast, dtype = chosen.autocast(device), chosen.dtype
    if cfg.dtype == "auto":
        log(f"precision: {dtype} ({chosen.reason})")
    scaler = precision.grad_scaler(device, dtype)  # a loss scale for float16, else inert
    if resume and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])

    step_fn = dist.wrap(model)  # DistributedDataParallel with several processes
    step_fn = torch.compile(step_fn) if cfg.compile else step_fn

    def evaluating() -> contextlib.ExitStack:
        """Every callback's context for an evaluation (an EMA's weights swapped in)."""
        stack = contextlib.ExitStack()
        for callback in callbacks.values():
            stack.enter_context(callback.evaluating(loop))
        return stack

    def evaluate() -> float:
        with evaluating():
            return bits_per_byte(
                model,
                val_slice,
                cfg.block_size,
                tokenizer.doc_id,
                device,
                autocast=autocast,
                stride=cfg.eval_stride,
            ).bpb

    def checkpoint(path: Path = out / CHECKPOINT) -> None:
        """Save the training state (rank 0 writes); refused for weights that are not finite."""
        nonlocal saved
        if not _finite(model):  # checked on every rank, so that all stop together
            raise _non_finite(clock, saved, cfg, out, "the weights")
        if dist.is_main:
            rng = {"torch": torch.get_rng_state(), "batches": batches.state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state()
            meta = {
                "step": clock.step,
                "tokens": clock.tokens,
                "train_time_s": clock.train_time,
                "loss_sum": loss_sum.item(),
                "loss_steps": loss_steps,
                "init_from": init_info,
                "precision": chosen.to_json(),
            }
            if scaler.is_enabled():
                meta["grad_scaler"] = scaler.state_dict()
            extra = {
                f"{name}.{key}": t
                for name, callback in callbacks.items()
                for key, t in callback.state_dict().items()
            }
            with _writing(path.name, clock.step, saved, out, dist.world):
                save_checkpoint(path, model, optimizer, rng, meta, extra)
        if path == out / CHECKPOINT:
            saved = clock.step

    def done() -> bool:
        return (
            (cfg.steps and clock.step >= cfg.steps)
            or (cfg.tokens and clock.tokens >= cfg.tokens)
            or (cfg.time and clock.train_time >= cfg.time)
        )

    tokens_per_step = cfg.batch_size * cfg.block_size
    loss_sum = torch.zeros((), device=device)  # training loss since the last evaluation
    loss_steps, last_val, last_report = 0, float("nan"), (clock.train_time, clock.tokens)
    saved = clock.step if resume else None  # the step of the checkpoint in the run folder
    watch = LossWatch(device)
    if resume:
        loss_sum.fill_(loss_sum_saved)
        loss_steps = loss_steps_saved
    # The first step's evaluation: a resumed run has it in metrics.jsonl already; a run started
    # from another run's checkpoint is evaluated where it starts, on or off the schedule.
    first_eval = False if resume else True if source else None
    with StopFlag() as stop:
        model.train()
        while True:
            finished = bool(done())
            if cfg.time:  # clocks differ between processes: stop when the first runs out
                finished = dist.any(finished, device)
            scheduled = clock.step % cfg.eval_every == 0 or finished
            if scheduled if first_eval is None else first_eval:
                mean_loss = dist.mean(loss_sum / max(1, loss_steps))  # over ranks
                train_loss = mean_loss.item() if loss_steps else float("nan")
                if loss_steps and not math.isfinite(train_loss):
                    raise _non_finite(clock, saved, cfg, out)
                if not _finite(model):
                    raise _non_finite(clock, saved, cfg, out, "the weights")
                if dist.is_main:
                    last_val = evaluate()
                    lr = optimizer.param_groups[0]["lr"]
                    with _writing(metrics_path.name, clock.step, saved, out, dist.world):
                        row = _append_metrics(metrics_path, clock, lr, train_loss, last_val)
                    on_eval(row)
                    for callback in callbacks.values():
                        callback.evaluated(loop, row)
                loss_sum.zero_()
                loss_steps = 0
                checkpoint()
            first_eval = None
            if clock.step == snapshot_at:
                checkpoint(snapshot_path(out, clock.step))
            if finished:
                break
            if dist.any(stop.signal is not None, device):  # every rank stops at the same step
                checkpoint()
                name = signal.Signals(stop.signal).name if stop.signal else "another process"
                raise Interrupted(
                    f"stopped by {name} at step {clock.step}; the "
                    f"checkpoint is saved. Continue with: klm run --resume {out}"
                    + (f" --nproc {dist.world}" if dist.active else "")
                )

            t0 = time.perf_counter()
            multiplier = schedule(clock.step, clock.progress(cfg))
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * multiplier
            x, y = dist.shard(*batches.next())  # each rank: its rows of the global batch
            if cfg.seq_warmup:
                x, y = shorter_rows(x, y, clock.progress(cfg), cfg.seq_warmup)
            with autocast:
                _, loss = step_fn(x, y)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)  # float16: skipped when the gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            loss_steps += 1
            diverged = watch.check(loss)
            if cfg.time:
                precision.synchronize(device)  # the time budget needs an honest clock
            clock.step += 1
            clock.tokens += tokens_per_step
            clock.train_time += time.perf_counter() - t0
            if dist.any(diverged, device):  # every rank stops at the same step
                raise _non_finite(clock, saved, cfg, out)
            loop.loss = loss.detach()
            for callback in callbacks.values():
                callback.stepped(loop)

            if progress is not None and dist.is_main and (clock.step % 10 == 0 or done()):
                current = (loss_sum / max(1, loss_steps)).item()
                dt = clock.train_time - last_report[0]
                tps = (clock.tokens - last_report[1]) / dt if dt > 0 else 0.0
                last_report = (clock.train_time, clock.tokens)
                progress(clock, clock.progress(cfg), current, last_val, tps)

    if not dist.is_main:  # rank 0 scores the run and writes its files; the others wait, so
        dist.barrier()  # that every process leaves the process group at the same time
        return {}
    final_slice = data.val.head(cfg.final_eval_bytes)
    with evaluating():  # the weights a callback evaluates (an EMA's) are the run's model
        with _writing(WEIGHTS, clock.step, saved, out, dist.world):
            save_weights(model, out / WEIGHTS)
        log("scoring the validation split")
        final = bits_per_byte(
            model,
            final_slice,
            cfg.block_size,
            tokenizer.doc_id,
            device,
            autocast=autocast,
            stride=cfg.eval_stride,
        )
    summary = {
        "val_bpb": final.bpb,
        "val_bpb_ci": final.ci(),
        "val_bpb_by_domain": final.by_domain,
        "val_bytes": final_slice.n_bytes,
        "val_documents": len(final.doc_bytes),
        "params": count_params(model),
        "steps": clock.step,
        "tokens_seen": clock.tokens,
        "train_time_s": clock.train_time,
        "tokens_per_s": clock.tokens / clock.train_time if clock.train_time else 0.0,
        "device": describe_device(device) + (f" x {dist.world} processes" if dist.active else ""),
        "dtype": dtype,
        "precision": chosen.to_json(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "vocab_size": tokenizer.vocab_size,
        "train_tokens": len(data.train.tokens),
        "init_from": init_info,
        "provenance": origin,
    }
    with _writing("summary.json", clock.step, saved, out, dist.world):
        atomic_write_json(out / "summary.json", summary)
    for callback in callbacks.values():
        callback.finished(loop, summary)
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


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    """Where ``train(snapshot_at=step)`` keeps the checkpoint taken at ``step``."""
    return Path(run_dir) / f"checkpoint-{step}.safetensors"


def branch_source(init_from: str | Path, cfg: RunConfig) -> Path:
    """The checkpoint file of ``init_from`` (a run folder or a checkpoint), checked against cfg."""
    path = Path(init_from)
    if path.is_dir():
        path = path / CHECKPOINT
    config = path.parent / "config.json"
    if not path.exists() or not config.exists():
        raise CheckpointError(
            f"init_from {init_from}: no checkpoint of a run there; give a run folder made by "
            "klm run or one of its checkpoint*.safetensors files"
        )
    src = json.loads(config.read_text())
    for key in ("tokenizer", "vocab_size"):
        if src.get(key) != cfg.get(key):
            raise ConfigError(
                f"init_from {init_from}: its {key} is {src.get(key)!r}, this run's is "
                f"{cfg.get(key)!r}; a run can only start from weights of the same tokenizer"
            )
    return path


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


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics up to the checkpoint's step: a resumed run rewrites what follows."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a torn last line from a killed process
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
