"""linear: the conformance kit, the running sums against the quadratic form they factor, and
its refusal of a score bias."""

import torch
import torch.nn.functional as F

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestLinear = conformance("attention", "linear")


def linear(block_size):
    registry = get_registry()
    overrides = {"block_size": block_size, "attention": "linear"}
    return registry.get("attention", "linear").factory(
        resolve(build_config(overrides=overrides), registry)
    )


def test_running_sums_equal_the_quadratic_form():
    torch.manual_seed(0)
    for T in (1, 5, 64):
        q, k, v = torch.randn(3, 2, 3, T, 8, dtype=torch.float64)
        fq, fk = F.elu(q) + 1, F.elu(k) + 1
        weights = (fq @ fk.transpose(-2, -1)).tril()  # the T x T matrix linear attention avoids
        expected = (weights / weights.sum(-1, keepdim=True)) @ v
        torch.testing.assert_close(linear(T)(q, k, v), expected, rtol=1e-6, atol=1e-6)


def test_long_sequences_need_no_t_by_t_matrix():
    T = 8192  # a T x T float matrix per head would be 256 MB; the running sums need ~2 MB
    y = linear(T)(*torch.randn(3, 1, 1, T, 8))
    assert y.shape == (1, 1, T, 8) and torch.isfinite(y).all()


def test_declares_that_it_takes_no_score_bias():
    assert "score_bias" not in get_registry().get("attention", "linear").provides
