"""Value embeddings (as in modded-nanogpt's speedrun records): extra token embedding tables
whose rows are added to the values of attention, so a block can pass on what a token *is*
without the stream above it having to carry it.

Block i uses table ``min(i, n_layer - 1 - i)`` when that is below ``value_embeds`` (the
outermost blocks share table 0, the next pair table 1, ...), else none; each use has its own
learned gain. A table costs vocab_size x n_embd parameters and a lookup, almost no compute,
which is why it suits a time budget. Tables start at zero, so the tweaked model starts out
computing exactly what the plain one does (tested); they are embeddings, which Muon leaves to
AdamW. It uses the model's ``value_input`` seam.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import hold_seam


def table_of(i: int, n_layer: int, tables: int) -> int | None:
    """The table block i reads, or None."""
    t = min(i, n_layer - 1 - i)
    return t if t < tables else None


class ValueEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, n_embd: int, n_layer: int, tables: int):
        super().__init__()
        self.use = [table_of(i, n_layer, tables) for i in range(n_layer)]
        used = 1 + max(t for t in self.use if t is not None)
        self.tables = nn.ModuleList(nn.Embedding(vocab_size, n_embd) for _ in range(used))
        for table in self.tables:
            nn.init.zeros_(table.weight)
        self.gains = nn.Parameter(torch.ones(n_layer))

    def forward(self, i: int, idx):
        t = self.use[i]
        return None if t is None else self.gains[i] * self.tables[t](idx)


def apply(model, cfg):
    tables = int(cfg.get("value_embeds"))
    if tables < 1:
        raise ConfigError(f"value_embeds must be at least 1, got {tables}")
    hold_seam(
        model,
        "value_input",
        "value-embeddings",
        lambda: ValueEmbeddings(*model.wte.weight.shape, len(model.blocks), tables),
    )


@hookimpl
def klm_register_tweak(register):
    register(
        "value-embeddings",
        apply,
        "value embeddings: token tables added to attention's values, shared by mirrored blocks",
        options={"value_embeds": 2},
        seams={"value_input"},
    )
