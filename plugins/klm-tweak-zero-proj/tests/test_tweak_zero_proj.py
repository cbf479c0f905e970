"""zero-proj: the conformance kit; at initialisation every block is the identity."""

import pytest
import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import TINY, conformance

TestZeroProj = conformance("tweak", "zero-proj")
TestZeroProjBias = conformance("tweak", "zero-proj", n_layer=2, bias=True)


def gpt(tweak="zero-proj", seed=0, **overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={**TINY, "tweak": tweak, **overrides}), registry)
    torch.manual_seed(seed)
    return cfg, build_model(cfg, 50, registry)


def test_every_residual_projection_starts_at_zero_and_nothing_else():
    cfg, model = gpt(n_layer=2, bias=True)
    _, plain = gpt("", n_layer=2, bias=True)
    zeroed = [n for n, p in model.named_parameters() if not p.any()]
    assert sorted(zeroed) == sorted(
        n for n, _ in model.named_parameters() if "c_proj" in n or n.endswith("bias")
    )
    for (n, a), b in zip(model.named_parameters(), plain.parameters(), strict=True):
        if "c_proj" not in n:
            assert torch.equal(a, b), n  # the rest: the plain GPT's initialisation


def test_blocks_are_the_identity_at_initialisation():
    _, model = gpt(n_layer=2)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    x = model.posemb.embed(model.wte(idx))
    expected = model.lm_head(model.ln_f(x))  # no block contributes
    torch.testing.assert_close(model(idx)[0], expected)


def test_the_projections_learn():
    _, model = gpt()
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    model(idx, torch.roll(idx, -1, dims=1))[1].backward()
    for n, p in model.named_parameters():
        if n.endswith("c_proj.weight"):
            assert p.grad.abs().sum() > 0, n


def test_refused_without_projections():
    with pytest.raises(ConfigError, match="zero-proj"):
        gpt(model="bigram")
