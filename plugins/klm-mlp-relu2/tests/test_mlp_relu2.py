"""relu2: the conformance kit, the nonlinearity's numbers, and the parameter count."""

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestRelu2 = conformance("mlp", "relu2")
TestRelu2Narrow = conformance("mlp", "relu2", mlp_ratio=2.0)


def mlp(name, **overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={"mlp": name, **overrides}), registry)
    return registry.get("mlp", name).factory(cfg)


def test_squares_the_positive_part():
    m = mlp("relu2", n_embd=4, mlp_ratio=1.0).double()
    with torch.no_grad():  # identity in, identity out: the MLP is then just relu(x)^2
        m.c_fc.weight.copy_(torch.eye(4))
        m.c_proj.weight.copy_(torch.eye(4))
    x = torch.tensor([[[-2.0, -0.5, 0.5, 3.0]]], dtype=torch.float64)
    torch.testing.assert_close(m(x), torch.tensor([[[0.0, 0.0, 0.25, 9.0]]], dtype=torch.float64))


def test_same_parameter_count_as_the_gelu_mlp():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(mlp("relu2", n_embd=128)) == count(mlp("gelu", n_embd=128)) == 8 * 128 * 128
