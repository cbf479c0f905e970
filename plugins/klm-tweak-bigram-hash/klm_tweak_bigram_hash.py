"""A hashed bigram embedding: each position's token embedding gets a second row, looked up by
a hash of the pair (previous token, this token), so the model sees which two tokens it is at
before any attention has run. ``trigram_buckets`` > 0 adds a third row, from a table of its
own, looked up by a hash of the last three tokens.

There are vocab_size**2 pairs and ``bigram_buckets`` rows, so pairs share rows where their
hashes collide; the first position of a window has no previous token and hashes the pair
(none, this token). A table costs buckets x n_embd parameters and a lookup, almost no
compute, which is why it suits a time budget (though the optimizer still updates every row
each step). The tables start at zero, so the tweaked model starts out computing exactly what
the plain one does (tested); they are embeddings, which Muon leaves to AdamW. It uses the
model's ``token_input`` seam.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import hold_seam

PRIME = 1_000_003  # spreads the earlier tokens over the buckets


def ngram_bucket(idx: torch.Tensor, vocab_size: int, buckets: int, n: int) -> torch.Tensor:
    """(B, T) token ids -> (B, T) bucket of the n tokens ending at each position; a position
    before the window's start is the token none (vocab_size)."""
    h = torch.zeros_like(idx)
    for back in range(n - 1, -1, -1):  # the oldest token first
        earlier = torch.cat(
            [torch.full_like(idx[:, :back], vocab_size), idx[:, : idx.size(1) - back]], 1
        )
        h = (h * PRIME + earlier) % buckets
    return h


def bigram_bucket(idx: torch.Tensor, vocab_size: int, buckets: int) -> torch.Tensor:
    """(B, T) token ids -> (B, T) bucket of (previous token, token)."""
    return ngram_bucket(idx, vocab_size, buckets, 2)


class BigramHash(nn.Module):
    def __init__(self, vocab_size: int, n_embd: int, buckets: int, trigram_buckets: int = 0):
        super().__init__()
        self.vocab_size, self.buckets, self.trigram_buckets = vocab_size, buckets, trigram_buckets
        self.table = nn.Embedding(buckets, n_embd)
        nn.init.zeros_(self.table.weight)
        self.trigrams = None
        if trigram_buckets:
            self.trigrams = nn.Embedding(trigram_buckets, n_embd)
            nn.init.zeros_(self.trigrams.weight)

    def forward(self, idx, x):
        x = x + self.table(bigram_bucket(idx, self.vocab_size, self.buckets))
        if self.trigrams is not None:
            x = x + self.trigrams(ngram_bucket(idx, self.vocab_size, self.trigram_buckets, 3))
        return x


def apply(model, cfg):
    buckets, trigrams = int(cfg.get("bigram_buckets")), int(cfg.get("trigram_buckets"))
    if buckets < 1:
        raise ConfigError(f"bigram_buckets must be at least 1, got {buckets}")
    if trigrams < 0:
        raise ConfigError(f"trigram_buckets must be 0 (no trigram table) or more, got {trigrams}")
    vocab_size, n_embd = model.wte.weight.shape
    hold_seam(
        model,
        "token_input",
        "bigram-hash",
        lambda: BigramHash(vocab_size, n_embd, buckets, trigrams),
    )


@hookimpl
def klm_register_tweak(register):
    register(
        "bigram-hash",
        apply,
        "hashed bigram embedding: a row per (previous, current) token pair added to the input",
        options={"bigram_buckets": 16384, "trigram_buckets": 0},
        seams={"token_input"},
    )
