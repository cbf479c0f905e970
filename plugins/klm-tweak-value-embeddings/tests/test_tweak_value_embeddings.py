"""value-embeddings: the conformance kit; at its start the tweaked GPT is the plain one, and
later block i's values are v + g_i * table(idx), with the mirrored blocks sharing a table."""

import pytest
import torch
from klm_tweak_value_embeddings import table_of

from kennethlm_core.errors import ConfigError
from kennethlm_core.testing import conformance, tiny_gpt

TestValueEmbeddings = conformance("tweak", "value-embeddings")

IDX = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))


def gpt(tweak="value-embeddings", seed=0, **overrides):
    return tiny_gpt(tweak, seed=seed, **overrides)


def test_mirrored_blocks_share_a_table():
    assert [table_of(i, 4, 2) for i in range(4)] == [0, 1, 1, 0]
    assert [table_of(i, 5, 1) for i in range(5)] == [0, None, None, None, 0]
    assert [table_of(i, 1, 3) for i in range(1)] == [0]
    model = gpt(n_layer=6, value_embeds=2)
    assert len(model.value_input.tables) == 2


def test_at_its_start_the_tweaked_model_is_the_plain_one():
    tweaked, plain = gpt(), gpt("")
    assert torch.equal(tweaked(IDX)[0], plain(IDX)[0])


def test_the_tables_are_added_to_the_values():
    model = gpt(n_layer=3, value_embeds=1)
    ve = model.value_input
    with torch.no_grad():
        for table in ve.tables:
            table.weight.normal_(0, 1.0)
        ve.gains.copy_(torch.tensor([0.5, 7.0, -2.0]))
        x = model.drop(model.posemb.embed(model.wte(IDX)))
        bias = model.posemb.score_bias(IDX.size(1), IDX.device)
        for i, block in enumerate(model.blocks):
            extra = None if i == 1 else ve.gains[i] * ve.tables[0](IDX)  # block 1 reads none
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(x)).split(x.size(-1), dim=2)
            v = v if extra is None else v + extra
            B, T, C = x.shape
            q, k, v = (t.view(B, T, attn.n_head, -1).transpose(1, 2) for t in (q, k, v))
            q, k = model.posemb.rotate(q, k)
            y = attn.attend(q, k, v, bias).transpose(1, 2).reshape(B, T, C)
            x = x + attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
        torch.testing.assert_close(model(IDX)[0], model.lm_head(model.ln_f(x)))


def test_the_tables_and_gains_learn():
    model = gpt().train()
    model(IDX, torch.roll(IDX, -1, dims=1))[1].backward()
    assert all(t.weight.grad.abs().sum() > 0 for t in model.value_input.tables)
    assert model.value_input.gains.grad is not None


def test_bad_table_counts_are_refused():
    with pytest.raises(ConfigError, match="value_embeds must be at least 1"):
        gpt(value_embeds=0)
