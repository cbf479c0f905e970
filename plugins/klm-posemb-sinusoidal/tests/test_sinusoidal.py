"""sinusoidal: the conformance kit, and the table against the formula."""

import math

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestSinusoidal = conformance("posemb", "sinusoidal")
TestSinusoidalOddWidth = conformance("posemb", "sinusoidal", n_embd=33, n_head=3)
TestSinusoidalScaled = conformance("posemb", "sinusoidal", sinusoidal_scale=0.1)


def sinusoidal(**overrides):
    registry = get_registry()
    cfg = resolve(build_config(overrides={"posemb": "sinusoidal", **overrides}), registry)
    return registry.get("posemb", "sinusoidal").factory(cfg)


def test_table_follows_the_formula_and_adds_nothing_learned():
    pe = sinusoidal(n_embd=16, n_head=2, block_size=32)
    assert list(pe.parameters()) == [] and pe.state_dict() == {}  # nothing saved or learned
    x = torch.zeros(1, 32, 16)
    table = pe.embed(x)[0]
    for t in (0, 1, 7, 31):
        for i in range(8):
            angle = t / 10000 ** (2 * i / 16)
            assert math.isclose(table[t, 2 * i], math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[t, 2 * i + 1], math.cos(angle), abs_tol=1e-6)


def test_scale_multiplies_the_table():
    x = torch.zeros(1, 8, 16)
    size = dict(n_embd=16, n_head=2, block_size=8)
    full, scaled = sinusoidal(**size), sinusoidal(sinusoidal_scale=0.1, **size)
    torch.testing.assert_close(scaled.embed(x), 0.1 * full.embed(x))
