"""untied-head: the conformance kit; a separate zero head, a uniform first prediction."""

import math

import pytest
import torch

from kennethlm_core.checkpoint import load_weights, save_weights
from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import build_model, count_params
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import TINY, conformance

TestUntiedHead = conformance("tweak", "untied-head")


def gpt(tweak="untied-head", seed=0, **overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={**TINY, "tweak": tweak, **overrides}), registry)
    torch.manual_seed(seed)
    return build_model(cfg, 50, registry)


def test_head_is_its_own_zero_matrix_and_the_embedding_is_kept():
    model, plain = gpt(), gpt("")
    assert model.lm_head.weight is not model.wte.weight
    assert not model.lm_head.weight.any()
    assert torch.equal(model.wte.weight, plain.wte.weight)
    assert count_params(model) == count_params(plain) + 50 * 32


def test_first_prediction_is_uniform():
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    logits, loss = gpt()(idx, torch.roll(idx, -1, dims=1))
    assert not logits.any()
    assert loss.item() == pytest.approx(math.log(50))


def test_head_and_embedding_train_apart_and_round_trip(tmp_path):
    model = gpt()
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(idx, torch.roll(idx, -1, dims=1))[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    save_weights(model, tmp_path / "m.safetensors")
    fresh = gpt(seed=5)
    load_weights(fresh, tmp_path / "m.safetensors")
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    assert torch.equal(fresh.wte.weight, model.wte.weight)


def test_refused_without_a_head():
    with pytest.raises(ConfigError, match="untied-head"):
        gpt(model="bigram")
