"""Bits per byte on hand-checkable cases and against a position-by-position reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kennethlm_core.builtin.tokenizers import ByteTokenizer, CharTokenizer
from kennethlm_core.data import TokenSplit
from kennethlm_core.metric import bits_per_byte, bootstrap_ratio, score_windows


def split_of(tok, docs: list[tuple[str, str]], chunk_chars: int = 0) -> TokenSplit:
    """A TokenSplit for (domain, text) documents, laid out as data.py lays them out: each
    document's tokens contiguous behind one document token, one row per chunk of at most
    ``chunk_chars`` characters (0: one chunk per document)."""
    domains = sorted({d for d, _ in docs})
    tokens, rows = [], []
    for number, (domain, text) in enumerate(docs):
        doc_start, size = len(tokens), chunk_chars or len(text)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        for i, piece in enumerate(pieces):
            start = len(tokens)
            tokens += ([tok.doc_id] if i == 0 else []) + tok.encode(piece)
            nbytes = len(piece.encode("utf-8"))
            rows.append((start, len(tokens), domains.index(domain), nbytes, number, doc_start))
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


def tiny_gpt(registry, vocab_size, block_size, posemb="learned"):
    """A randomly initialised GPT: its predictions depend on every token of context."""
    from kennethlm_core.config import build_config, resolve
    from kennethlm_core.model import build_model

    overrides = dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size, posemb=posemb)
    cfg = resolve(build_config(overrides=overrides), registry)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size, registry).eval()
    with torch.no_grad():  # larger weights than at initialisation: context matters a lot
        for p in model.parameters():
            p.mul_(4.0)
    return model


def reference_bits(model, split, context_start) -> dict[int, float]:
    """Bits per document, one forward pass per target: target p of a chunk is predicted from
    tokens[context_start(p, doc_start) : p], its document's tokens only."""
    tokens = torch.tensor(np.asarray(split.tokens, dtype=np.int64))
    bits: dict[int, float] = {}
    for start, end, _, _, doc, doc_start in split.rows.tolist():
        for p in range(max(start, doc_start + 1), end):
            c = context_start(p, doc_start)
            assert doc_start <= c < p
            logits, _ = model(tokens[c:p][None])
            logp = torch.log_softmax(logits[0, -1].double(), dim=-1)
            bits[doc] = bits.get(doc, 0.0) - logp[tokens[p]].item() / math.log(2)
    return bits


LONG_DOCS = [
    ("news", "Kort nyhed om vejret i dag: blæst og regn, siden sol. " * 3),
    ("fiction", "Der var engang en ørn 🦅, som fløj over skoven og søen."),
    ("news", "Endnu en nyhed med æ, ø og å, lidt længere end den første. " * 4 + "\n"),
    ("fiction", "Kort."),
]


@pytest.mark.parametrize("posemb", ["learned", "rope"])
def test_stride_one_equals_scoring_each_token_with_its_full_context(registry, posemb):
    """With stride 1 every target sees min(block_size, what its document has) tokens: the
    result equals a loop that scores each token alone with exactly that window, to 1e-6."""
    tok, T = ByteTokenizer(), 16
    split = split_of(tok, LONG_DOCS, chunk_chars=50)  # multi-chunk documents
    model = tiny_gpt(registry, 257, T, posemb)
    ref = reference_bits(model, split, lambda p, s: max(s, p - T))
    res = bits_per_byte(model, split, T, tok.doc_id, batch_size=7, stride=1)
    assert res.doc_bits == pytest.approx([ref[d] for d in sorted(ref)], rel=1e-6)
    total = sum(len(t.encode()) for _, t in LONG_DOCS)
    assert res.doc_bytes.sum() == total  # every byte counted once
    assert res.bpb == pytest.approx(sum(ref.values()) / total, rel=1e-6)


def test_strided_windows_give_every_target_half_the_context(registry):
    """The default stride (block_size // 2): the batched result equals a per-token loop that
    uses the context each target's window gives it, and that context is at least
    block_size / 2 tokens, or the whole document before it."""
    tok, T = ByteTokenizer(), 16
    split = split_of(tok, LONG_DOCS, chunk_chars=50)
    rng = np.random.default_rng(0)  # rows in any order, and only some of them (a slice)
    split = TokenSplit(
        split.tokens, split.rows[rng.permutation(len(split.rows))[:-2]], split.domains
    )
    windows = score_windows(split, T)
    context = {}  # target position -> first context token, from the windows
    for w, lo, hi, _ in windows.tolist():
        for j in range(lo, hi):
            assert w + 1 + j not in context  # no target scored twice
            context[w + 1 + j] = w
    targets = [
        p
        for start, end, *_, doc_start in split.rows.tolist()
        for p in range(max(start, doc_start + 1), end)
    ]
    assert sorted(context) == sorted(targets)  # ... and none left out
    doc_start_of = {
        p: doc_start for start, end, *_, doc_start in split.rows.tolist() for p in range(start, end)
    }
    for p, c in context.items():
        assert min(T // 2, p - doc_start_of[p]) <= p - c <= T
    model = tiny_gpt(registry, 257, T)
    ref = reference_bits(model, split, lambda p, s: context[p])
    res = bits_per_byte(model, split, T, tok.doc_id, batch_size=5)
    assert res.doc_bits == pytest.approx([ref[d] for d in sorted(ref)], rel=1e-6)
    assert res.doc_bytes.sum() == split.n_bytes


def test_more_context_scores_a_context_dependent_model_differently(registry):
    """Non-overlapping windows (stride = block_size) are not what the default measures."""
    tok, T = ByteTokenizer(), 16
    split = split_of(tok, LONG_DOCS, chunk_chars=50)
    model = tiny_gpt(registry, 257, T)
    strided = bits_per_byte(model, split, T, tok.doc_id)
    blocks = bits_per_byte(model, split, T, tok.doc_id, stride=T)
    assert strided.doc_bytes.sum() == blocks.doc_bytes.sum()
    assert abs(strided.bpb - blocks.bpb) > 1e-3


def test_bootstrap_interval_brackets_the_ratio():
    rng = np.random.default_rng(0)
    num, den = rng.uniform(1, 3, 200), rng.uniform(1, 2, 200)
    lo, hi = bootstrap_ratio(num, den)
    assert lo < num.sum() / den.sum() < hi
    assert bootstrap_ratio(np.array([3.0]), np.array([2.0])) is None
