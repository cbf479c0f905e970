"""ema: the conformance kit (a run trains with it, a resumed run ends like a straight one);
the average is torch's EMA; evaluations and the saved model use it, training does not."""

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kennethlm_core.checkpoint import load_weights
from kennethlm_core.components import Loop
from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import TINY, conformance
from kennethlm_core.train import train

TestEMA = conformance("callback", "ema")


def tiny(**overrides):
    registry = get_registry()
    return registry, resolve(build_config(overrides={**TINY, **overrides}), registry)


def test_the_average_is_torchs_exponential_moving_average():
    registry, cfg = tiny(callback="ema", ema_decay=0.9)
    torch.manual_seed(0)
    model = build_model(cfg, 50, registry)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = registry.get("callback", "ema").factory(cfg)
    loop = Loop(cfg, None, model, optimizer, None, print)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for step in range(12):
        idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(step))
        model(idx, torch.roll(idx, -1, dims=1))[1].backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.stepped(loop)
        reference.update_parameters(model)
    theirs = dict(reference.module.named_parameters())
    for name, average in ema.average.items():
        torch.testing.assert_close(average, theirs[name].detach(), rtol=1e-6, atol=1e-7)
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.evaluating(loop):  # the average in place of the weights ...
        for name, p in model.named_parameters():
            assert torch.equal(p, ema.average[name])
    for name, p in model.named_parameters():  # ... and the weights back after
        assert torch.equal(p, raw[name])


def test_the_saved_model_is_the_average_and_training_is_untouched(tmp_path):
    registry, plain = tiny(steps=30, eval_every=10, eval_bytes=2048, final_eval_bytes=4096)
    with_ema = plain.replace(callback="ema")
    with_ema = resolve(with_ema, registry)
    a = train(plain, tmp_path / "plain", registry=registry)
    b = train(with_ema, tmp_path / "ema", registry=registry)
    rows = [(r["step"], r["train_loss"]) for r in _metrics(tmp_path / "plain")]
    assert rows == [(r["step"], r["train_loss"]) for r in _metrics(tmp_path / "ema")]
    assert a["val_bpb"] != b["val_bpb"]  # scored on the average
    torch.manual_seed(0)
    model = build_model(with_ema, a["vocab_size"], registry)
    load_weights(model, tmp_path / "ema" / "model.safetensors")
    from kennethlm_core.checkpoint import read_checkpoint

    tensors, _ = read_checkpoint(tmp_path / "ema" / "checkpoint.safetensors")
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, tensors[f"extra.ema.{name}"])  # saved: the average
        assert not torch.equal(p, tensors[f"model.{name}"])  # the raw weights, for resuming


def _metrics(run):
    from kennethlm_core.rundir import read_metrics

    return read_metrics(run)


def test_a_decay_outside_zero_to_one_is_refused():
    registry, cfg = tiny(callback="ema", ema_decay=1.0)
    with pytest.raises(ConfigError, match=r"ema_decay must be in \[0, 1\)"):
        registry.get("callback", "ema").factory(cfg)
