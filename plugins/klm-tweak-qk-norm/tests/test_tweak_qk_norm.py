"""qk-norm: the conformance kit, unit-RMS queries and keys, and invariance to their scale."""

import pytest
import torch

from kennethlm_core.errors import ConfigError
from kennethlm_core.testing import conformance, tiny_gpt

TestQkNorm = conformance("tweak", "qk-norm")
TestQkNormRope = conformance("tweak", "qk-norm", posemb="rope")


def gpt(tweak="qk-norm", seed=0, **overrides):
    return tiny_gpt(tweak, seed=seed, **overrides)


def test_queries_and_keys_have_unit_rms():
    model = gpt()
    qk = model.blocks[0].attn.qk_transform
    q, k = torch.randn(2, 2, 2, 16, 16) * 30
    for t in qk(q, k):
        torch.testing.assert_close(t.pow(2).mean(-1), torch.ones(2, 2, 16), atol=1e-4, rtol=0)


def test_scores_do_not_grow_with_the_query_and_key_weights():
    """Scaling the q and k rows of c_attn by 100 leaves a QK-normed GPT's logits alone; a
    plain GPT's attention sharpens and its logits move."""
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    for tweak, unchanged in (("qk-norm", True), ("", False)):
        model = gpt(tweak)
        before = model(idx)[0]
        with torch.no_grad():
            model.blocks[0].attn.c_attn.weight[:64] *= 100  # q and k rows (n_embd 32)
        assert torch.allclose(model(idx)[0], before, atol=1e-4) == unchanged, tweak


def test_every_block_gets_its_own_norm():
    model = gpt(n_layer=3)
    norms = [b.attn.qk_transform for b in model.blocks]
    assert len({id(n) for n in norms}) == 3
    assert sum(p.numel() for n in norms for p in n.parameters()) == 3 * 2 * 16


def test_refused_without_attention_blocks():
    with pytest.raises(ConfigError, match="qk-norm"):
        gpt(model="bigram")
