"""rope: the conformance kit, the rotation's defining properties, its option and odd heads."""

import pytest
import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestRope = conformance("posemb", "rope")
TestRopeShortBase = conformance("posemb", "rope", rope_base=100.0)


def rope(**overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={"posemb": "rope", **overrides}), registry)
    return registry.get("posemb", "rope").factory(cfg)


def test_scores_depend_on_relative_distance_only():
    pe = rope(n_embd=32, n_head=2, block_size=32)
    torch.manual_seed(0)
    q0, k0 = torch.randn(2, 16, dtype=torch.float64)
    q = q0.expand(1, 1, 32, 16).float()  # the same query and key at every position
    k = k0.expand(1, 1, 32, 16).float()
    rq, rk = pe.rotate(q, k)
    scores = (rq @ rk.transpose(-2, -1))[0, 0]
    for offset in (0, 1, 5):
        diagonal = torch.diagonal(scores, -offset)  # query t, key t - offset, for every t
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4, rtol=0)
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, -5)[0])


def test_rotation_keeps_lengths_and_leaves_position_zero_alone():
    pe = rope(n_embd=32, n_head=2, block_size=16)
    q, k = torch.randn(2, 1, 2, 16, 16)
    rq, rk = pe.rotate(q, k)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rq[..., 0, :], q[..., 0, :])


def test_the_base_sets_the_wavelengths():
    q, k = torch.randn(2, 1, 1, 16, 8)
    size = dict(n_embd=16, n_head=2, block_size=16)
    short, default = rope(rope_base=100.0, **size), rope(**size)
    assert not torch.allclose(short.rotate(q, k)[0], default.rotate(q, k)[0])


def test_odd_head_dimension_is_refused_with_a_fix():
    with pytest.raises(ConfigError, match=r"head dimension must be even.*try --n-embd 36"):
        rope(n_embd=33, n_head=3)
