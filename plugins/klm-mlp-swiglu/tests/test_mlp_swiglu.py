"""swiglu: the conformance kit, the gate's numbers, and the parameter count."""

import torch
import torch.nn.functional as F

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestSwiglu = conformance("mlp", "swiglu")
TestSwigluWide = conformance("mlp", "swiglu", swiglu_ratio=4.0)


def mlp(name, **overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={"mlp": name, **overrides}), registry)
    return registry.get("mlp", name).factory(cfg)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_matches_the_formula():
    torch.manual_seed(0)
    m = mlp("swiglu", n_embd=16).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    w_gate, w_up = m.c_fc.weight.split(m.hidden, dim=0)
    expected = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ m.c_proj.weight.T
    torch.testing.assert_close(m(x), expected)


def test_parameter_count_close_to_the_gelu_mlp():
    for n_embd in (48, 128, 384):
        swiglu, gelu = count(mlp("swiglu", n_embd=n_embd)), count(mlp("gelu", n_embd=n_embd))
        assert abs(swiglu - gelu) / gelu < 0.01, (n_embd, swiglu, gelu)
    assert mlp("swiglu", n_embd=128).hidden == 341
    assert count(mlp("swiglu", n_embd=128)) == 3 * 341 * 128


def test_the_ratio_sets_the_hidden_size():
    assert mlp("swiglu", n_embd=32, swiglu_ratio=2.0).hidden == 64
