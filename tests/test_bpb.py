"""Bits per byte on hand-checkable cases and against a position-by-position reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kennethlm_core.builtin.tokenizers import ByteTokenizer, CharTokenizer
from kennethlm_core.data import TokenSplit
from kennethlm_core.evaluate import bits_per_byte, bootstrap_ratio


def split_of(tok, docs: list[tuple[str, str]]) -> TokenSplit:
    """A TokenSplit for (domain, text) documents, the way data.py lays them out."""
    domains = sorted({d for d, _ in docs})
    tokens, rows = [], []
    for domain, text in docs:
        rows.append((len(tokens), domains.index(domain), len(text.encode("utf-8"))))
        tokens += [tok.doc_id, *tok.encode(text)]
    return TokenSplit(np.array(tokens, dtype=np.uint16), np.array(rows, dtype=np.int64), domains)


class Uniform(nn.Module):
    """Equal logits over the first ``n`` ids, -inf elsewhere."""

    def __init__(self, vocab, n):
        super().__init__()
        self.logits = torch.full((vocab,), float("-inf"))
        self.logits[:n] = 0.0

    def forward(self, idx, targets=None):
        return self.logits.expand(*idx.shape, -1), None


DOCS = [
    ("news", "Kort nyhed om vejret: blæst og regn."),
    ("fiction", "Der var engang en ørn 🦅."),
    ("news", "Endnu en, lidt længere nyhed med æ, ø og å.\n"),
]


@pytest.mark.parametrize("block_size", [1, 4, 7, 64])
def test_uniform_over_bytes_is_exactly_eight_bits_per_byte(block_size):
    tok = ByteTokenizer()
    res = bits_per_byte(Uniform(257, 256), split_of(tok, DOCS), block_size, tok.doc_id)
    assert res.bpb == pytest.approx(8.0, rel=1e-6)  # float32 logits
    assert res.by_domain == {"fiction": pytest.approx(8.0), "news": pytest.approx(8.0)}


def test_uniform_over_a_char_vocabulary_costs_log2_v_per_character():
    tok = CharTokenizer()
    text = "abcabc ab"
    tok.train([text])
    split = split_of(tok, [("x", text)])
    n = len(tok.chars)
    res = bits_per_byte(Uniform(tok.vocab_size, n), split, 4, tok.doc_id)
    assert res.bpb == pytest.approx(math.log2(n) * len(text) / len(text.encode()), rel=1e-6)


def test_matches_a_window_by_window_reference():
    torch.manual_seed(0)
    tok = ByteTokenizer()
    split = split_of(tok, DOCS)
    model = nn.Sequential(nn.Embedding(257, 257))
    T = 8

    class Wrap(nn.Module):
        def forward(self, idx, targets=None):
            return model(idx), None

    res = bits_per_byte(Wrap(), split, T, tok.doc_id, batch_size=3)
    stream = torch.tensor(split.tokens.astype(np.int64))
    bits = 0.0
    for start in range(0, len(stream) - 1, T):  # non-overlapping windows, one at a time
        x, y = stream[start : start + T], stream[start + 1 : start + T + 1]
        logp = torch.log_softmax(model(x[: len(y)]), dim=-1)
        for pos, target in enumerate(y.tolist()):
            if target != tok.doc_id:
                bits -= logp[pos, target].item() / math.log(2)
    total_bytes = sum(len(t.encode()) for _, t in DOCS)
    assert res.bpb == pytest.approx(bits / total_bytes, rel=1e-6)
    assert res.doc_bits.sum() == pytest.approx(bits, rel=1e-6)


def test_bootstrap_interval_brackets_the_ratio():
    rng = np.random.default_rng(0)
    num, den = rng.uniform(1, 3, 200), rng.uniform(1, 2, 200)
    lo, hi = bootstrap_ratio(num, den)
    assert lo < num.sum() / den.sum() < hi
    assert bootstrap_ratio(np.array([3.0]), np.array([2.0])) is None
