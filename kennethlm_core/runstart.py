"""How a training run starts: every check that can be made before any data is read or
file written (``preflight`` among them), the data, the run's first files, the model,
optimizer and callbacks, and a resumed run's state from its checkpoint (``restore``) or a
branched run's from another run's (``start_from``); then its precision (``choose_precision``).
``start`` does these in order and returns the Run (runstate.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kennethlm_core import precision, provenance
from kennethlm_core.atomic import atomic_write_text
from kennethlm_core.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    read_checkpoint,
    unique_state,
)
from kennethlm_core.components import Counted, Loop
from kennethlm_core.config import RunConfig, component_names, logger_components
from kennethlm_core.data import Batches, cache_root, format_mix, mix_weights, prepare_data
from kennethlm_core.device import pick_device
from kennethlm_core.distributed import check_batch, threads_per_process
from kennethlm_core.errors import CheckpointError, ConfigError
from kennethlm_core.model import build_model, count_params
from kennethlm_core.rundir import (
    branch_source,
    check_run_dir,
    init_run_dir,
    read_metrics,
    truncate_metrics,
)
from kennethlm_core.runstate import Clock, LossWatch, Run, writing

# torch.compile's compiled code is kept beside the token cache (unless the environment says
# where), so a second run does not compile again. Set on import: inductor fixes its folder
# the first time anything asks for it.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))


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
    device = check_run(cfg, out, dist, registry, resume, force)
    data = load_data(cfg, out, dist, registry, resume, source, allow_changes, log)
    mix = mix_weights(cfg.mix, data.train, cfg.block_size)
    cfg = cfg.replace(mix=format_mix(mix))  # config.json records the weights used
    origin = provenance.run_provenance(cfg, registry, data.meta)  # the code and data used
    changes = provenance.check_resume(out, origin, allow_changes) if resume else []
    if not resume and dist.is_main:
        with writing("the run's first files", 0, None, out):
            init_run_dir(out, cfg)
            provenance.save(out, origin)
            data.tokenizer.save(out / "tokenizer")
    dist.barrier()  # the run folder exists before any rank reads from it
    run = build_run(cfg, out, dist, registry, log, device, data, origin, list(mix.values()))
    meta = restore(run, resume, source, changes)
    if not resume and source is None:
        count_parts(run)
    start_callbacks(run, registry, resume, meta.get("extra", {}))
    choose_precision(run, meta.get("precision") if resume else None)
    if resume and meta.get("grad_scaler"):
        run.scaler.load_state_dict(meta["grad_scaler"])
    run.step_fn = dist.wrap(run.model)  # DistributedDataParallel with several processes
    run.step_fn = torch.compile(run.step_fn) if cfg.compile else run.step_fn
    run.watch = LossWatch(device)
    return run


def check_run(
    cfg: RunConfig, out: Path, dist: Any, registry: Any, resume: bool, force: bool
) -> torch.device:
    """The checks before any data is read or file written; this process's threads and
    device."""
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
    return device


def load_data(
    cfg: RunConfig,
    out: Path,
    dist: Any,
    registry: Any,
    resume: bool,
    source: Path | None,
    allow_changes: bool,
    log: Callable[[str], None],
) -> Any:
    """The run's data (data.Prepared), tokenized as its weights were when it resumes or
    branches; a resumed run whose code or corpus changed is refused first."""
    tokenizer = None
    if resume or source:  # the weights belong to this tokenizer
        tokenizer = registry.get("tokenizer", cfg.tokenizer).factory(cfg)
        tokenizer.load((source.parent if source else out) / "tokenizer")
    if resume:  # changed code or corpus: refuse before reading any data
        provenance.check_resume(out, provenance.planned_provenance(cfg, registry), allow_changes)
    with dist.main_first():  # rank 0 fills the token cache, the others then read it
        return prepare_data(cfg, registry, tokenizer=tokenizer, log=log)


def build_run(
    cfg: RunConfig,
    out: Path,
    dist: Any,
    registry: Any,
    log: Callable[[str], None],
    device: torch.device,
    data: Any,
    origin: dict[str, Any],
    weights: list[float],
) -> Run:
    """A new Run: the model (initialised from the seed), its optimizer and schedule, and the
    batches (drawn with the domain ``weights``), at step 0."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.tokenizer.vocab_size, registry).to(device)
    optimizer = registry.get("optimizer", cfg.optimizer).factory(cfg, model)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    run = Run(
        cfg, out, dist, log, device, data, origin, model, optimizer,
        schedule=registry.get("schedule", cfg.schedule).factory(cfg),
        batches=Batches(data.train, cfg.block_size, cfg.batch_size, cfg.seed, device, weights),
        clock=Clock(), init_info=None,
    )  # fmt: skip
    run.loss_sum = torch.zeros((), device=device)
    return run


def count_parts(run: Run) -> None:
    """Count the training split into the model's counted parts (components.Counted, an n-gram
    model), charging the time to the training clock: counting is how they train."""
    for name, part in run.model.named_modules():
        if isinstance(part, Counted):
            t0 = time.perf_counter()
            part.count(run.data.train.tokens)
            took = time.perf_counter() - t0
            run.clock.train_time += took
            run.log(
                f"counted {len(run.data.train.tokens):,} training tokens into {name} ({took:.1f}s)"
            )


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


def start_callbacks(run: Run, registry: Any, resume: bool, saved: dict[str, Any]) -> None:
    """The run's callbacks, then its loggers (loggers.py): made, given their tensors from the
    checkpoint when the run resumes (``saved``, under "NAME.KEY"), and started."""
    cfg = run.cfg
    run.loop = Loop(
        cfg, run.out, run.model, run.optimizer, run.clock, run.log, run.dist.is_main,
        resumed=resume,
    )  # fmt: skip
    run.callbacks = {
        name: registry.get("callback", name).factory(cfg)
        for name in [*component_names(cfg.callback, "callback"), *component_names(cfg.logger)]
    }
    for name, callback in run.callbacks.items():
        if resume:
            prefix = f"{name}."
            callback.load_state_dict(
                {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
            )
        callback.started(run.loop)


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
