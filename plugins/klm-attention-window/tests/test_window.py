"""window: the conformance kit with a window shorter than the context, the band it attends to,
and a bad window. Its agreement with `naive` for a window >= context is in the core's tests."""

import pytest
import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestWindow = conformance("attention", "window", window=4)
TestWindowOfOne = conformance("attention", "window", window=1)


def window(size, block_size=16):
    registry = get_registry()
    overrides = {"block_size": block_size, "attention": "window", "window": size}
    return registry.get("attention", "window").factory(
        resolve(build_config(overrides=overrides), registry)
    )


def test_attends_to_exactly_the_last_window_tokens():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 16, 8, dtype=torch.float64)
    y = window(4)(q, k, v)
    for t in range(16):
        first = max(0, t - 3)
        scores = q[..., t : t + 1, :] @ k[..., first : t + 1, :].transpose(-2, -1) / 8**0.5
        expected = scores.softmax(-1) @ v[..., first : t + 1, :]
        torch.testing.assert_close(y[..., t : t + 1, :], expected)


def test_a_window_of_one_copies_the_values():
    q, k, v = torch.randn(3, 1, 2, 16, 8)
    torch.testing.assert_close(window(1)(q, k, v), v)


def test_window_must_be_positive():
    with pytest.raises(ConfigError, match="window must be at least 1"):
        window(0)
