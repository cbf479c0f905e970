"""bigram-hash: the conformance kit; at its start the tweaked GPT is the plain one, and later
each position's embedding is wte(token) + table[bucket(previous token, token)], plus
trigrams[bucket(two tokens back, previous token, token)] with a trigram table."""

import pytest
import torch
from klm_tweak_bigram_hash import PRIME, bigram_bucket, ngram_bucket

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


def test_the_trigram_bucket_is_the_hash_of_the_last_three_tokens():
    idx = torch.tensor([[3, 7, 7, 1]])
    triples = [(50, 50, 3), (50, 3, 7), (3, 7, 7), (7, 7, 1)]  # before the start: none
    want = [((a * PRIME + b) * PRIME + c) % 97 for a, b, c in triples]
    assert ngram_bucket(idx, 50, 97, 3).tolist() == [want]


def test_buckets_stay_in_range_for_large_vocabularies():
    idx = torch.randint(0, 200_000, (2, 64), generator=torch.Generator().manual_seed(2))
    for n in (2, 3, 4):
        b = ngram_bucket(idx, 200_000, 65_536, n)
        assert b.min() >= 0 and b.max() < 65_536  # no int64 overflow into negatives


def test_at_its_start_the_tweaked_model_is_the_plain_one():
    tweaked, plain = gpt(trigram_buckets=64), gpt("")
    assert torch.equal(tweaked(IDX)[0], plain(IDX)[0])


@pytest.mark.parametrize("trigram_buckets", [0, 29])
def test_the_pair_row_is_added_to_the_token_embedding(trigram_buckets):
    model = gpt(bigram_buckets=31, trigram_buckets=trigram_buckets)
    plain = gpt("")
    with torch.no_grad():
        model.token_input.table.weight.normal_(0, 1.0)
        rows = model.token_input.table(bigram_bucket(IDX, 50, 31))
        if trigram_buckets:
            model.token_input.trigrams.weight.normal_(0, 1.0)
            rows = rows + model.token_input.trigrams(ngram_bucket(IDX, 50, 29, 3))
        else:
            assert model.token_input.trigrams is None
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
    with pytest.raises(ConfigError, match="trigram_buckets must be 0"):
        gpt(trigram_buckets=-1)
