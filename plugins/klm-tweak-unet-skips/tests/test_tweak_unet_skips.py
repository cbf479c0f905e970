"""unet-skips: the conformance kit; at its start the tweaked GPT is the plain one, and later
each decoder block adds w_i times its mirror block's input."""

import pytest
import torch

from kennethlm_core.errors import ConfigError
from kennethlm_core.testing import conformance, tiny_gpt

TestUNetSkips = conformance("tweak", "unet-skips", n_layer=2)  # a U-net needs two halves

IDX = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))


def gpt(tweak="unet-skips", seed=0, **overrides):
    return tiny_gpt(tweak, seed=seed, **{"n_layer": 2, **overrides})


def wired_by_hand(model, idx, w):
    """A 5-block GPT written out: blocks 0-2 plain, block 3 reads block 1's input, block 4
    the embedded input."""
    x = model.drop(model.posemb.embed(model.wte(idx)))
    bias = model.posemb.score_bias(idx.size(1), idx.device)
    inputs = []
    for i, block in enumerate(model.blocks):
        if i == 3:
            x = x + w[0] * inputs[1]
        if i == 4:
            x = x + w[1] * inputs[0]
        inputs.append(x)
        x = block(x, model.posemb, bias)
    return model.lm_head(model.ln_f(x))


def test_at_its_start_the_tweaked_model_is_the_plain_one():
    tweaked, plain = gpt(), gpt("")
    assert torch.equal(tweaked(IDX)[0], plain(IDX)[0])


def test_decoder_blocks_read_their_mirror_blocks_input():
    model = gpt(n_layer=5)
    w = torch.tensor([0.7, -1.3])
    with torch.no_grad():
        model.block_input.weights.copy_(w)
        torch.testing.assert_close(model(IDX)[0], wired_by_hand(model, IDX, w))
        assert not torch.allclose(model(IDX)[0], wired_by_hand(model, IDX, torch.zeros(2)))


def test_the_skip_weights_learn():
    model = gpt().train()
    model(IDX, torch.roll(IDX, -1, dims=1))[1].backward()
    assert model.block_input.weights.grad.abs().sum() > 0


def test_it_is_refused_where_it_cannot_wire():
    with pytest.raises(ConfigError, match="at least 2 blocks"):
        gpt(n_layer=1)
    with pytest.raises(ConfigError, match="both hold the model's block_input seam"):
        gpt("residual-scalars,unet-skips")  # refused before a model is built
    from klm_tweak_unet_skips import apply

    with pytest.raises(ConfigError, match="already holds the model's block_input seam"):
        apply(gpt(), None)  # and build_model alone finds the seam taken
