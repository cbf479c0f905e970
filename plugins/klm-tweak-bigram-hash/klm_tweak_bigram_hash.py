"""A hashed bigram embedding: each position's token embedding gets a second row, looked up by
a hash of the pair (previous token, this token), so the model sees which two tokens it is at
before any attention has run.

There are vocab_size**2 pairs and ``bigram_buckets`` rows, so pairs share rows where their
hashes collide; the first position of a window has no previous token and hashes the pair
(none, this token). A table costs buckets x n_embd parameters and a lookup, almost no
compute, which is why it suits a time budget (though the optimizer still updates every row
each step). The table starts at zero, so the tweaked model starts out computing exactly what
the plain one does (tested); it is an embedding, which Muon leaves to AdamW. It uses the
model's ``token_input`` seam.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import hold_seam

PRIME = 1_000_003  # spreads the previous token over the buckets


def bigram_bucket(idx: torch.Tensor, vocab_size: int, buckets: int) -> torch.Tensor:
    """(B, T) token ids -> (B, T) bucket of (previous token, token); none is vocab_size."""
    prev = torch.cat([torch.full_like(idx[:, :1], vocab_size), idx[:, :-1]], dim=1)
    return (prev * PRIME + idx) % buckets


class BigramHash(nn.Module):
    def __init__(self, vocab_size: int, n_embd: int, buckets: int):
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.table = nn.Embedding(buckets, n_embd)
        nn.init.zeros_(self.table.weight)

    def forward(self, idx, x):
        return x + self.table(bigram_bucket(idx, self.vocab_size, self.buckets))


def apply(model, cfg):
    buckets = int(cfg.get("bigram_buckets"))
    if buckets < 1:
        raise ConfigError(f"bigram_buckets must be at least 1, got {buckets}")
    hold_seam(
        model, "token_input", "bigram-hash", lambda: BigramHash(*model.wte.weight.shape, buckets)
    )


@hookimpl
def klm_register_tweak(register):
    register(
        "bigram-hash",
        apply,
        "hashed bigram embedding: a row per (previous, current) token pair added to the input",
        options={"bigram_buckets": 16384},
        seams={"token_input"},
    )
