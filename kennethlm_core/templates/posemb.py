import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.components import PositionalEmbedding


class Starter(PositionalEmbedding):
    """A position can enter in three places; this one uses the first.

    embed(x)             add to the token embeddings (B, T, C)
    rotate(q, k)         transform queries and keys (B, H, T, D) in every block
    score_bias(T, dev)   an additive attention-score bias, broadcastable to (B, H, T, T)
    """

    def __init__(self, cfg):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(cfg.block_size, 1))

    def embed(self, x):
        return x + self.offset[: x.size(1)]


@hookimpl
def klm_register_posemb(register):
    register(
        "$name",
        Starter,
        "$summary",
    )
