"""Saving and loading without surprises: safetensors for tensors, JSON for the rest, and every
write atomic (atomic.py: temporary file, fsync, rename), so a process killed at any moment
leaves the previous file intact. Nothing here unpickles: loading a checkpoint never executes code.

A run folder holds ``model.safetensors`` (the weights, for eval and sampling) and
``checkpoint.safetensors`` (weights, optimizer state, random generators, data position and
training clock in one file, so they can never disagree), which ``--resume`` reads.

Only finite weights are ever saved: a weight holding NaN or infinity is refused
(``NonFiniteWeights``) and the file already there is kept.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from kennethlm_core.atomic import atomic_write_with
from kennethlm_core.errors import CheckpointError

# isort: split
# Moved to atomic.py; kept importable from here for code written before the move.
from kennethlm_core.atomic import atomic_write_json, atomic_write_text  # noqa: F401

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"


class NonFiniteWeights(CheckpointError):
    """A weight holds NaN or infinity: the save was refused and the file there is kept."""


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (under their first name)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.stride()) if t.numel() else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(path)
    except Exception as e:
        raise CheckpointError(
            f"{path} is truncated or not a safetensors file ({str(e).splitlines()[0][:80]}); "
            "restore it, or train the run again"
        ) from None


def _metadata(path: Path) -> dict[str, Any]:
    with safe_open(path, framework="pt") as f:
        return json.loads((f.metadata() or {}).get("klm", "{}"))


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    names = [k.rpartition(".") for k in tensors]
    for prefix, part in model.named_modules():  # counts come in the size they were counted
        if getattr(part, "counted", False):  # a components.Counted part (a layer above here)
            part.resize({name: tensors[f"{at}.{name}"] for at, _, name in names if at == prefix})
    expected = unique_state(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model of config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(t.shape)}, the model expects "
                f"{tuple(expected[name].shape)}; were config.json or the tokenizer changed?"
            )
    model.load_state_dict(tensors, strict=False)


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse to save ``state`` to ``path`` when a floating-point tensor is not finite."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteWeights(
                f"{name} holds NaN or infinite values; {Path(path).name} was not written"
            )


def _save_file(tensors: dict[str, torch.Tensor], tmp: Path, metadata=None) -> None:
    """safetensors' ``save_file``, which writes straight from the tensors (``save`` would hold
    two copies of the file in memory); a write it could not make is an OSError, as any
    other write's (a full disk, a file-size limit), with its errno."""
    try:
        save_file(tensors, tmp, metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(tmp)) from None


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    state = unique_state(model)
    check_finite(state, path)
    atomic_write_with(path, lambda tmp: _save_file(state, tmp))


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    load_state(model, _read(Path(path)), Path(path))


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    meta: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Everything a resumed run needs, in one file written atomically; ``extra``: other
    tensors to keep (the callbacks' state), which load_checkpoint returns as meta["extra"]."""
    state = unique_state(model)
    check_finite(state, path)
    tensors = {f"model.{k}": v for k, v in state.items()}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    for name, state in rng.items():
        tensors[f"rng.{name}"] = state.contiguous().cpu()
    for name, t in (extra or {}).items():
        tensors[f"extra.{name}"] = t.detach().contiguous().cpu()
    klm = {**meta, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    metadata = {"klm": json.dumps(klm)}
    atomic_write_with(path, lambda tmp: _save_file(tensors, tmp, metadata))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors of a checkpoint (``model.*``, ``optim.*``, ``rng.*``, ``extra.*``) and its
    metadata."""
    path = Path(path)
    tensors = _read(path)
    try:
        meta = _metadata(path)
        if "param_groups" not in meta or "optim_scalars" not in meta:
            raise KeyError
    except Exception:
        raise CheckpointError(f"{path} has no KennethLM metadata; it is not a checkpoint") from None
    return tensors, meta


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer in place; return (rng states, meta)."""
    path = Path(path)
    tensors, meta = read_checkpoint(path)
    groups = meta.pop("param_groups")
    scalars = meta.pop("optim_scalars")
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in scalars.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    try:
        optimizer.load_state_dict({"state": dict(sorted(state.items())), "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit ({e})") from None
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    if extra:
        meta["extra"] = extra
    return rng, meta
