"""softcap: the conformance kit; logits are cap * tanh(plain logits / cap)."""

import pytest
import torch

from kennethlm_core.errors import ConfigError
from kennethlm_core.testing import conformance, tiny_gpt

TestSoftcap = conformance("tweak", "softcap")
TestSoftcapTight = conformance("tweak", "softcap", logit_cap=2.0)


def gpt(tweak="softcap", seed=0, **overrides):
    return tiny_gpt(tweak, seed=seed, **overrides)


def test_logits_are_the_plain_logits_capped():
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    capped, plain = gpt(logit_cap=0.05), gpt("")
    expected = 0.05 * torch.tanh(plain(idx)[0] / 0.05)
    torch.testing.assert_close(capped(idx)[0], expected)
    assert plain(idx)[0].abs().max() > 0.05  # the cap is active here


def test_logits_stay_inside_the_cap():
    model = gpt(logit_cap=3.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)  # huge raw logits
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    assert model(idx)[0].abs().max() <= 3.0


@pytest.mark.parametrize("cap", [0.0, -1.0])
def test_a_cap_must_be_positive(cap):
    with pytest.raises(ConfigError, match="logit_cap"):
        gpt(logit_cap=cap)
