"""flash: the conformance kit, and the mixed precision a GPT gives it under autocast.
Its numerical agreement with `naive` is tested with the other attentions, in the core's tests."""

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestFlash = conformance("attention", "flash")


def flash(**settings):
    registry = get_registry()
    cfg = resolve(
        build_config(overrides={"block_size": 8, "attention": "flash", **settings}), registry
    )
    return registry.get("attention", "flash").factory(cfg)


def test_bfloat16_queries_take_a_float32_bias():
    q, k, v = torch.randn(3, 1, 2, 8, 4).to(torch.bfloat16)
    bias = torch.randn(2, 8, 8)  # a posemb's cached bias stays float32 under autocast
    y = flash().eval()(q, k, v, bias)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_dropout_acts_in_training_only():
    attend = flash(dropout=0.5)
    q, k, v = torch.randn(3, 1, 2, 8, 4)
    assert not torch.equal(attend.train()(q, k, v), attend.eval()(q, k, v))
