"""rmsnorm: the conformance kit, and the numbers against a hand-written reference."""

import math

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestRmsnorm = conformance("norm", "rmsnorm")
TestRmsnormLargeEps = conformance("norm", "rmsnorm", rms_eps=1e-2)


def rmsnorm(dim, **overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={"norm": "rmsnorm", **overrides}), registry)
    return registry.get("norm", "rmsnorm").factory(cfg, dim)


def reference(row, gain, eps):
    """y_i = x_i / sqrt(mean_j x_j^2 + eps) * g_i, one number at a time."""
    mean_square = sum(v * v for v in row) / len(row)
    return [v / math.sqrt(mean_square + eps) * g for v, g in zip(row, gain, strict=True)]


def test_matches_a_hand_written_reference():
    torch.manual_seed(0)
    norm = rmsnorm(6, rms_eps=1e-3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 1.0, 1.5, -2.0, 0.0, 3.0]))
    x = torch.randn(2, 3, 6, dtype=torch.float64) * 4
    y = norm.double()(x)
    gain = norm.weight.tolist()
    for b in range(2):
        for t in range(3):
            expected = reference(x[b, t].tolist(), gain, 1e-3)
            torch.testing.assert_close(
                y[b, t], torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0
            )


def test_unit_rms_with_unit_gain_and_no_centering():
    norm = rmsnorm(64, rms_eps=0.0)
    x = torch.randn(4, 10, 64) * 2 + 5  # a large mean: RMSNorm does not remove it
    y = norm(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, 10), atol=1e-5, rtol=0)
    assert (y.mean(-1) > 0.7).all()  # unlike LayerNorm, the mean survives
    torch.testing.assert_close(norm(5 * x), y, atol=1e-5, rtol=0)  # scale invariant


def test_has_only_a_gain():
    norm = rmsnorm(16)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_eps_keeps_zero_input_finite():
    y = rmsnorm(8)(torch.zeros(1, 2, 8))
    assert torch.equal(y, torch.zeros(1, 2, 8))
