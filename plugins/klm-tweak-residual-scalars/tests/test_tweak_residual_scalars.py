"""residual-scalars: the conformance kit; at its start the tweaked GPT is the plain one, and
later it computes lambda_i x + mu_i x0 before block i."""

import pytest
import torch

from kennethlm_core.errors import ConfigError
from kennethlm_core.testing import conformance, tiny_gpt

TestResidualScalars = conformance("tweak", "residual-scalars")

IDX = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))


def gpt(tweak="residual-scalars", seed=0, **overrides):
    return tiny_gpt(tweak, seed=seed, **overrides)


def wired_by_hand(model, idx, keep, embedded):
    """The GPT's forward pass written out, with the mix before each block."""
    x = x0 = model.drop(model.posemb.embed(model.wte(idx)))
    bias = model.posemb.score_bias(idx.size(1), idx.device)
    for i, block in enumerate(model.blocks):
        x = block(keep[i] * x + embedded[i] * x0, model.posemb, bias)
    return model.lm_head(model.ln_f(x))


def test_at_its_start_the_tweaked_model_is_the_plain_one():
    tweaked, plain = gpt(), gpt("")
    assert plain.block_input is None
    assert torch.equal(tweaked(IDX)[0], plain(IDX)[0])  # same weights, same numbers, exactly


def test_the_stream_is_mixed_with_the_embedded_input_before_each_block():
    model = gpt(n_layer=3)
    keep, embedded = torch.tensor([0.5, 1.5, -1.0]), torch.tensor([0.3, -0.2, 2.0])
    with torch.no_grad():
        model.block_input.keep.copy_(keep)
        model.block_input.embedded.copy_(embedded)
        torch.testing.assert_close(model(IDX)[0], wired_by_hand(model, IDX, keep, embedded))


def test_a_plain_gpt_is_the_plain_stack():
    model = gpt("", n_layer=3)
    with torch.no_grad():
        torch.testing.assert_close(model(IDX)[0], wired_by_hand(model, IDX, [1] * 3, [0] * 3))


def test_the_scalars_learn():
    model = gpt().train()
    model(IDX, torch.roll(IDX, -1, dims=1))[1].backward()
    assert model.block_input.embedded.grad.abs().sum() > 0
    assert model.block_input.keep.grad.abs().sum() > 0


def test_two_rewirings_are_refused():
    from klm_tweak_residual_scalars import apply

    model = gpt()
    with pytest.raises(ConfigError, match="already holds the model's block_input seam"):
        apply(model, None)
