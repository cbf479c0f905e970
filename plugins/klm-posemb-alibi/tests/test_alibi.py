"""alibi: the conformance kit, the paper's slopes (any head count), the bias and its needs."""

import pytest
import torch
from klm_posemb_alibi import alibi_slopes

from kennethlm_core.config import build_config, resolve
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import conformance

TestAlibi = conformance("posemb", "alibi")
TestAlibiThreeHeads = conformance("posemb", "alibi", n_head=3, n_embd=24)


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, [2**-8]),
        (4, [2**-2, 2**-4, 2**-6, 2**-8]),
        (8, [2**-i for i in range(1, 9)]),
        (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),  # 4 heads' slopes, then 8's odd ones
        (12, [2 ** (-i) for i in range(1, 9)] + [2 ** (-i / 2) for i in (1, 3, 5, 7)]),
    ],
)
def test_slopes_follow_the_paper(n, expected):
    assert alibi_slopes(n) == pytest.approx(expected)


def test_bias_penalises_distance_per_head():
    registry = get_registry()
    cfg = resolve(
        build_config(overrides={"posemb": "alibi", "n_head": 4, "block_size": 8}), registry
    )
    bias = registry.get("posemb", "alibi").factory(cfg).score_bias(8, torch.device("cpu"))
    assert bias.shape == (4, 8, 8)
    for h, m in enumerate(alibi_slopes(4)):
        for t in range(8):
            for s in range(t + 1):
                assert bias[h, t, s].item() == pytest.approx(-m * (t - s))


def test_requires_an_attention_that_takes_a_score_bias():
    assert get_registry().get("posemb", "alibi").requires == {"attention": {"score_bias"}}
