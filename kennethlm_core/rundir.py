"""The run folder: which files a run keeps, making and replacing one, reading it back.

config.json        the run's settings (RunConfig)       metrics.jsonl    one row per eval
checkpoint.safetensors, model.safetensors, tokenizer/   summary.json     the final scores
provenance.json    the code, data and machine it ran on  eval.json        klm eval's results
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kennethlm_core import provenance
from kennethlm_core.atomic import atomic_write_json, atomic_write_text
from kennethlm_core.checkpoint import CHECKPOINT, WEIGHTS
from kennethlm_core.config import BUDGET_KEYS, WATCHING, RunConfig, coerce, resolve, same_config
from kennethlm_core.errors import CheckpointError, ConfigError

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    CHECKPOINT,
    WEIGHTS,
    "summary.json",
    "tokenizer",
    provenance.FILE,
)


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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def truncate_metrics(path: Path, step: int) -> None:
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
