"""Weights and checkpoints: exact round trips, atomic writes, corrupt files, no pickle."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from kennethlm_core.atomic import atomic_write_with
from kennethlm_core.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from kennethlm_core.errors import CheckpointError
from kennethlm_core.model import build_model

from .conftest import tiny_config


def model_and_input(registry, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny_config(registry, **overrides)
    return build_model(cfg, 60, registry).eval(), torch.randint(0, 60, (2, cfg.block_size))


def test_weights_round_trip_gives_identical_logits(tmp_path, registry):
    model, x = model_and_input(registry)
    save_weights(model, tmp_path / "model.safetensors")
    other, _ = model_and_input(registry, seed=1)
    load_weights(other, tmp_path / "model.safetensors")
    assert torch.equal(model(x)[0], other(x)[0])
    assert other.wte.weight is other.lm_head.weight  # still tied after loading


def test_checkpoint_keeps_extra_tensors_beside_the_training_state(tmp_path, registry):
    model, x = model_and_input(registry)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    extra = {"ema.wte.weight": torch.randn(3, 4), "counter.steps": torch.tensor(12)}
    save_checkpoint(tmp_path / "ck.safetensors", model, opt, {}, {"step": 1}, extra)
    _, meta = load_checkpoint(tmp_path / "ck.safetensors", *model_and_optimizer(registry))
    assert meta["extra"].keys() == extra.keys()
    assert all(torch.equal(meta["extra"][k], v) for k, v in extra.items())


def model_and_optimizer(registry):
    model, _ = model_and_input(registry, seed=3)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_checkpoint_restores_optimizer_and_generators(tmp_path, registry):
    model, x = model_and_input(registry)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(x, x)[1].backward()
    opt.step()
    rng = {"torch": torch.get_rng_state()}
    save_checkpoint(tmp_path / "ck.safetensors", model, opt, rng, {"step": 7})
    model2, _ = model_and_input(registry, seed=5)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    rng2, meta = load_checkpoint(tmp_path / "ck.safetensors", model2, opt2)
    assert meta == {"step": 7} and torch.equal(rng2["torch"], rng["torch"])
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        a, b = opt.state[p], opt2.state[q]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])
    for m, o in ((model, opt), (model2, opt2)):  # one more identical step
        o.zero_grad()
        m(x, x)[1].backward()
        o.step()
    assert torch.equal(model(x)[0], model2(x)[0])


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_a_streamed_write_that_fails_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.safetensors"
    atomic_write_text(path, "old")

    def half(tmp):  # as save_file would, had it been killed half way through
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(path, half)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_are_a_clear_error(tmp_path, registry, damage):
    model, _ = model_and_input(registry)
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_weights(model, path)


def test_weights_for_another_vocabulary_are_refused(tmp_path, registry):
    model, _ = model_and_input(registry)
    save_weights(model, tmp_path / "m.safetensors")
    torch.manual_seed(0)
    other = build_model(tiny_config(registry), 61, registry)
    with pytest.raises(CheckpointError, match=r"shape \(60, 32\).*expects \(61, 32\)"):
        load_weights(other, tmp_path / "m.safetensors")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_is_refused_and_never_executed(tmp_path, registry):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"wte.weight": Payload(marker)}))
    model, _ = model_and_input(registry)
    with pytest.raises(CheckpointError):
        load_weights(model, path)
    assert not marker.exists()
