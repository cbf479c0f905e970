"""bigram-hash: the conformance kit; at its start the tweaked GPT is the plain one, and later
each position's embedding is wte(token) + table[bucket(previous token, token)]."""

import pytest
import torch
from klm_tweak_bigram_hash import PRIME, bigram_bucket

from kennethlm_core.errors import ConfigError
from kennethlm_core.testing import conformance, tiny_gpt

TestBigramHash = conformance("tweak", "bigram-hash")

IDX = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))


def gpt(tweak="bigram-hash", seed=0, **overrides):
    return tiny_gpt(tweak, seed=seed, **overrides)


def test_the_bucket_is_the_hash_of_the_pair():
    idx = torch.tensor([[3, 7, 7, 1]])
    pairs = [(50, 3), (3, 7), (7, 7), (7, 1)]  # the first position's previous token: none
    assert bigram_bucket(idx, 50, 97).tolist() == [[(p * PRIME + c) % 97 for p, c in pairs]]


def test_at_its_start_the_tweaked_model_is_the_plain_one():
    tweaked, plain = gpt(), gpt("")
    assert torch.equal(tweaked(IDX)[0], plain(IDX)[0])


def test_the_pair_row_is_added_to_the_token_embedding():
    model, plain = gpt(bigram_buckets=31), gpt("")
    with torch.no_grad():
        model.token_input.table.weight.normal_(0, 1.0)
        rows = model.token_input.table(bigram_bucket(IDX, 50, 31))
        # the plain model fed the summed embedding computes the tweaked model's logits
        plain.wte.weight.copy_(model.wte.weight)
        x = plain.drop(plain.posemb.embed(plain.wte(IDX) + rows))
        bias = plain.posemb.score_bias(IDX.size(1), IDX.device)
        for block in plain.blocks:
            x = block(x, plain.posemb, bias)
        torch.testing.assert_close(model(IDX)[0], plain.lm_head(plain.ln_f(x)))


def test_the_table_learns_only_the_rows_it_used():
    model = gpt(bigram_buckets=4096).train()
    model(IDX, torch.roll(IDX, -1, dims=1))[1].backward()
    grad = model.token_input.table.weight.grad
    used = bigram_bucket(IDX, 50, 4096).unique()
    assert grad[used].abs().sum(dim=1).gt(0).all()
    unused = torch.ones(4096, dtype=torch.bool)
    unused[used] = False
    assert grad[unused].abs().sum() == 0


def test_bad_bucket_counts_are_refused():
    with pytest.raises(ConfigError, match="bigram_buckets must be at least 1"):
        gpt(bigram_buckets=0)
