"""Attention kernels against the written-out reference, in float32.

`flash` computes what `naive` computes, with and without an ALiBi-style score bias (built here,
from the paper's formula) and at several lengths; `window` with a window at least as long as
the context is `naive`; `mean` is an explicit cumulative average. Components are looked up
through the registry, as a run would.
"""

from __future__ import annotations

import pytest
import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCK, HEADS, D = 64, 4, 16
LENGTHS = [1, 7, 33, 64]


def attention(name, **settings):
    registry = get_registry()
    size = dict(block_size=BLOCK, n_head=HEADS, n_embd=HEADS * D)
    cfg = resolve(build_config(overrides={**size, "attention": name, **settings}), registry)
    return registry.get("attention", name).factory(cfg).eval()


def qkv(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, HEADS, T, D, generator=g) for _ in range(3)]


def alibi_like(T):
    """-m_h * (t - s): geometric slopes 2^(-8h/H), a linear penalty on distance."""
    slopes = 2.0 ** (-8.0 * torch.arange(1, HEADS + 1) / HEADS)
    t = torch.arange(T)
    distance = (t.view(1, -1) - t.view(-1, 1)).clamp(max=0).float()
    return slopes.view(-1, 1, 1) * distance


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("bias", [None, alibi_like], ids=["no-bias", "alibi-bias"])
def test_flash_matches_naive(T, bias):
    q, k, v = qkv(T)
    b = bias(T) if bias else None
    expected = attention("naive")(q, k, v, b)
    torch.testing.assert_close(attention("flash")(q, k, v, b), expected, atol=1e-5, rtol=1e-5)


def test_flash_gradients_match_naive():
    grads = []
    for name in ("naive", "flash"):
        q, k, v = (x.requires_grad_(True) for x in qkv(BLOCK))
        attention(name)(q, k, v, alibi_like(BLOCK)).pow(2).sum().backward()
        grads.append([q.grad, k.grad, v.grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("window", [BLOCK, 10 * BLOCK])
@pytest.mark.parametrize("T", LENGTHS)
def test_window_as_long_as_the_context_is_naive(T, window):
    q, k, v = qkv(T)
    for b in (None, alibi_like(T)):
        expected = attention("naive")(q, k, v, b)
        got = attention("window", window=window)(q, k, v, b)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", LENGTHS)
def test_mean_is_the_cumulative_average(T):
    q, k, v = qkv(T)
    expected = torch.stack([v[..., : t + 1, :].mean(dim=-2) for t in range(T)], dim=-2)
    torch.testing.assert_close(attention("mean")(q, k, v), expected, atol=1e-6, rtol=1e-6)
