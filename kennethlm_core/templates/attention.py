import math

import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl


class Starter(nn.Module):
    """softmax(q k^T / sqrt(d) + bias) v with a causal mask: q, k, v are (B, H, T, D)."""

    def __init__(self, cfg):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        future = torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool).triu(1)
        self.register_buffer("future", future, persistent=False)  # cached, never saved

    def forward(self, q, k, v, bias=None):
        T = q.size(-2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
        if bias is not None:  # e.g. ALiBi's distance penalty
            scores = scores + bias
        scores = scores.masked_fill(self.future[:T, :T], float("-inf"))
        return self.dropout(F.softmax(scores, dim=-1)) @ v


@hookimpl
def klm_register_attention(register):
    register(
        "$name",
        Starter,
        "$summary",
        provides={"score_bias"},  # it takes a score bias (ALiBi needs that)
    )
