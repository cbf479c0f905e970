"""mean: the conformance kit, and that the weights ignore queries and keys.
Its agreement with an explicit cumulative average is tested in the core's tests."""

import torch

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestMean = conformance("attention", "mean")


def test_queries_and_keys_do_not_matter():
    registry = get_registry()
    cfg = resolve(build_config(overrides={"block_size": 8, "attention": "mean"}), registry)
    attend = registry.get("attention", "mean").factory(cfg)
    q, k, v = torch.randn(3, 2, 2, 8, 4)
    assert torch.equal(attend(q, k, v), attend(-5 * q, k.flip(-2), v))
