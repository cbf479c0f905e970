"""Training many runs into one folder: jobs, whether a run folder is done, half done or
someone else's, and running jobs one by one or as parallel subprocesses (klm compare, klm
ladder and klm sweep all train through ``run_jobs``; ladder and sweep through ``run_points``).

``python -m kennethlm_core.jobs JOB_JSON`` trains one job: the subprocess ``run_jobs`` starts
for each job when ``jobs > 1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kennethlm_core import provenance
from kennethlm_core.config import (
    RunConfig,
    resolve,
    same_config,
)
from kennethlm_core.errors import ConfigError, Interrupted, KLMError

# -- the runs -------------------------------------------------------------------------------


@dataclass
class Job:
    """One run of a comparison: what to train, where, and how to start."""

    arm: str
    seed: int
    cfg: RunConfig
    out: Path
    mode: str = "new"  # new | resume | restart (same configuration, start again) | done
    init_from: Path | None = None
    snapshot_at: int | None = None
    allow_changes: bool = False  # resume even if the code or data changed (train records it)
    changes: list[str] = field(default_factory=list)  # what changed, when allowed

    @property
    def label(self) -> str:
        return f"{self.arm} seed {self.seed}"

    def to_json(self, disabled: list[str]) -> str:
        return json.dumps(
            {
                "config": self.cfg.to_dict(),
                "out": str(self.out),
                "mode": self.mode,
                "init_from": str(self.init_from) if self.init_from else None,
                "snapshot_at": self.snapshot_at,
                "allow_changes": self.allow_changes,
                "disabled": list(disabled),
            }
        )


def run_state(
    job: Job,
    init_step: int | None,
    force: bool,
    *,
    current: dict[str, Any] | None = None,
    allow_changes: bool = False,
) -> str:
    """done, resume, restart or new, from what the run folder holds.

    With ``current`` (provenance.planned_provenance of the job's configuration), a run to reuse
    or resume must have been made with that code and data: otherwise it is refused, unless
    ``allow_changes`` (``job.changes`` says what changed) or ``force`` (trained again).
    """
    mode = _folder_state(job, init_step, force)
    if current is None or mode not in ("done", "resume"):
        return mode

    changes, clause = provenance.changes_since(job.out, current)
    if not changes:
        return mode
    if allow_changes:
        job.changes = changes
        return mode
    if force:
        return "restart"
    what = "reuse" if mode == "done" else "resume"
    raise ConfigError(
        f"cannot {what} {job.out} ({job.label}): {clause}; pass --allow-changes to {what} "
        "it anyway (recorded in summary.json), --force to train it again, or another --out"
    )


def _folder_state(job: Job, init_step: int | None, force: bool) -> str:
    # imports torch: not at the top, for `klm --help`
    from kennethlm_core.checkpoint import CHECKPOINT
    from kennethlm_core.rundir import snapshot_path

    config = job.out / "config.json"
    if not config.exists():
        return "new"
    if not same_config(json.loads(config.read_text()), job.cfg):
        if force:
            return "restart"
        raise ConfigError(
            f"{job.out} holds a run of another configuration; use --force to replace it, or "
            "--out for a new experiment folder"
        )
    summary = job.out / "summary.json"
    if summary.exists():
        started = (json.loads(summary.read_text()).get("init_from") or {}).get("step")
        snapshot_ok = job.snapshot_at is None or snapshot_path(job.out, job.snapshot_at).exists()
        return "done" if started == init_step and snapshot_ok else "restart"
    return "resume" if (job.out / CHECKPOINT).exists() else "restart"


def execute(job: Job, registry: Any) -> dict[str, Any]:
    """Train one job in this process."""
    from kennethlm_core.train import train  # imports torch: not at the top, for `klm --help`

    return train(
        job.cfg,
        job.out,
        registry=registry,
        resume=job.mode == "resume",
        force=job.mode == "restart",
        allow_changes=job.allow_changes,
        init_from=None if job.mode == "resume" else job.init_from,
        snapshot_at=job.snapshot_at,
    )


def run_jobs(
    jobs: list[Job],
    n_jobs: int,
    registry: Any,
    *,
    disabled: list[str],
    logs: Path,
    say: Callable[[str], None],
    failed: dict[str, str] | None = None,
) -> None:
    """Train the jobs that are not done: in this process, or in up to n_jobs subprocesses.

    A run that fails stops them all, unless ``failed`` is given: then its one-line reason is
    kept there under the run folder's path and the other runs go on (a sweep, where a
    diverging cell is a result). Ctrl-C and SIGTERM always stop everything."""
    todo = [j for j in jobs if j.mode != "done"]
    for job in jobs:
        if job.mode == "done":
            say(f"{job.label}: finished before, reused")

    def failure(job: Job, message: str) -> None:
        failed[str(job.out)] = message
        say(f"{job.label}: failed: {message}")

    if n_jobs <= 1:
        for job in todo:
            say(f"{job.label}: {_starting(job)}")
            try:
                summary = execute(job, registry)
            except Interrupted:
                raise
            except KLMError as e:
                if failed is None:
                    raise
                failure(job, " ".join(str(e).split()))
                continue
            say(_finished(job, summary))
        return

    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[Job, subprocess.Popen, Path]] = []
    with _stopped_by_sigterm(), _stopping(running):
        while todo or running:
            while todo and len(running) < n_jobs:
                job = todo.pop(0)
                log = logs / f"{job.arm}-seed-{job.seed}.log"
                with open(log, "w", encoding="utf-8") as f:
                    proc = subprocess.Popen(  # its own session: Ctrl-C reaches it through us
                        [sys.executable, "-m", "kennethlm_core.jobs", job.to_json(disabled)],
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        env=provenance.child_env(),  # this process's code, wherever it runs
                    )
                running.append((job, proc, log))
                say(f"{job.label}: {_starting(job)} (log: {log})")
            time.sleep(0.2)
            for item in list(running):
                job, proc, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode == 130 and failed is not None:  # stopped, not failed
                    raise Interrupted(f"{job.label} was stopped")
                if proc.returncode != 0:
                    lines = log.read_text(encoding="utf-8").strip().splitlines() or ["no output"]
                    if failed is None:
                        raise KLMError(f"{job.label} failed: {lines[-1]} (see {log})")
                    failure(job, f"{lines[-1].removeprefix('klm: error: ')} (see {log})")
                    continue
                say(_finished(job, json.loads((job.out / "summary.json").read_text())))


@contextlib.contextmanager
def _stopping(running: list[tuple[Job, subprocess.Popen, Path]]):
    """On an error, Ctrl-C or SIGTERM: let the running workers checkpoint and stop."""
    try:
        yield
    finally:
        for _job, proc, _log in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # finish the step, checkpoint, exit
        for _job, proc, _log in running:
            proc.wait()


@contextlib.contextmanager
def _stopped_by_sigterm():
    """SIGTERM stops a comparison as Ctrl-C does. A comparison started in the background
    (``nohup klm compare ... &``) ignores SIGINT, and a plain SIGTERM would end this process
    and leave its workers, in sessions of their own, training on."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _starting(job: Job) -> str:
    what = {"new": "training", "restart": "training", "resume": "resuming"}[job.mode]
    if job.init_from is not None and job.mode != "resume":
        what += f" from {job.init_from}"
    return what


def _finished(job: Job, summary: dict[str, Any]) -> str:
    return f"{job.label}: val_bpb {summary['val_bpb']:.4f} in {summary['train_time_s']:.0f}s"


def _worker(argv: list[str]) -> int:
    """`python -m kennethlm_core.jobs JOB_JSON`: train one job (a subprocess of run_jobs)."""
    # imports torch: not at the top, for `klm --help`
    from kennethlm_core.plugins import get_registry

    spec = json.loads(argv[0])
    try:
        registry = get_registry(spec["disabled"])
        cfg = resolve(RunConfig.from_dict(spec["config"]), registry)
        init = Path(spec["init_from"]) if spec["init_from"] else None
        job = Job("", 0, cfg, Path(spec["out"]), spec["mode"], init, spec["snapshot_at"])
        job.allow_changes = bool(spec.get("allow_changes"))
        summary = execute(job, registry)
    except Interrupted as e:
        print(f"klm: stopped: {e}", file=sys.stderr)
        return 130
    except KLMError as e:
        print(f"klm: error: {e}", file=sys.stderr)
        return 2
    print(f"val_bpb {summary['val_bpb']:.4f}")
    return 0


# -- named configurations on seeds: the runner of klm sweep and klm ladder -----------------


def prepare_points(cfgs: list[RunConfig], registry: Any, say: Callable[[str], None]) -> list:
    """The prepared data (data.PreparedData) of every configuration, each corpus and
    tokenizer prepared once, before any run starts (parallel runs then only read the cache)."""
    from kennethlm_core.data import prepare_data  # imports torch: not at the top, for `klm --help`

    prepared: dict[tuple, Any] = {}
    out = []
    for cfg in cfgs:
        key = (cfg.corpus, cfg.tokenizer, cfg.vocab_size, cfg.tokenizer_train_bytes)
        key += (cfg.val_fraction, cfg.test_fraction)
        if key not in prepared:
            prepared[key] = prepare_data(cfg, registry, log=say)
        out.append(prepared[key])
    return out


def with_resolved_mix(cfg: RunConfig, prepared: Any) -> RunConfig:
    """The configuration with its mix written as the weights a run records in config.json
    (a temperature or unnormalised weights would not match the saved run when reused)."""
    # imports torch: not at the top, for `klm --help`
    from kennethlm_core.data import format_mix, mix_weights

    if not cfg.mix:
        return cfg
    return cfg.replace(mix=format_mix(mix_weights(cfg.mix, prepared.train, cfg.block_size)))


def run_points(
    points: list[tuple[str, RunConfig]],
    folder: Path,
    *,
    seeds: list[int],
    registry: Any,
    jobs: int = 1,
    force: bool = False,
    allow_changes: bool = False,
    disabled: list[str] | None = None,
    say: Callable[[str], None] = lambda msg: None,
    again: str,
    keep_going: bool = False,
    vocab_size: int,
    probe: RunConfig | None = None,
) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """Train (or reuse, or resume) every point on every seed, in ``folder/<name>/seed-<s>``.

    A finished run is reused and an interrupted one resumed when its configuration, code and
    data are what would run now (run_state); ``allow_changes`` uses them anyway,
    ``force`` trains them again. Every ``--dtype auto`` run gets the precision one probe chose
    on ``probe`` (default: the first point; its tokenizer has ``vocab_size`` tokens). With
    ``keep_going`` a run that fails is recorded and the others go on. Returns ({name: [Job per
    seed]}, {run folder: why it failed}).
    """
    from kennethlm_core import precision  # imports torch: not at the top, for `klm --help`

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // jobs) if jobs > 1 else 0
    plan: dict[str, list[Job]] = {}
    for name, cfg in points:
        current = None
        for seed in seeds:
            run_cfg = cfg.replace(seed=seed, **({"threads": threads} if threads else {}))
            job = Job(name, seed, run_cfg, folder / name / f"seed-{seed}")
            job.allow_changes = allow_changes
            if current is None and (job.out / "config.json").exists():
                current = provenance.planned_provenance(run_cfg, registry)
            job.mode = run_state(job, None, force, current=current, allow_changes=allow_changes)
            plan.setdefault(name, []).append(job)
    todo = [j for js in plan.values() for j in js]
    for job in (j for j in todo if j.changes):
        say(f"{job.label}: {provenance.sentence(job.changes)}; used anyway (--allow-changes)")
    failed: dict[str, str] = {}
    decided: Any = contextlib.nullcontext()
    if any(j.mode != "done" for j in todo):
        decided = precision.one_answer(probe or points[0][1], registry, vocab_size, log=say)
    try:
        with decided:
            run_jobs(
                todo,
                jobs,
                registry,
                disabled=disabled or [],
                logs=folder / "logs",
                say=say,
                failed=failed if keep_going else None,
            )
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(
            f"finished runs are kept and unfinished ones checkpointed; run the same {again} "
            "again to continue"
        ) from None
    return plan, failed


def provenance_overrides(plan: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Runs reused or resumed although their code or data changed (--allow-changes)."""
    return [
        {
            "run": str(j.out),
            "use": "reused" if j.mode == "done" else "resumed",
            "changed": j.changes,
        }
        for jobs in plan.values()
        for j in jobs
        if j.changes
    ]


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
