"""The baseline layers: naive attention, learned positions, LayerNorm and the GELU MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core.components import PositionalEmbedding
from kennethlm_core.errors import ConfigError


class NaiveAttention(nn.Module):
    """softmax(q k^T / sqrt(d) + bias, causally masked) v, every step written out."""

    def __init__(self, cfg):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        causal = torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool).tril()
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, q, k, v, bias=None):
        T = q.size(-2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, H, T, T)
        if bias is not None:
            att = att + bias
        att = att.masked_fill(~self.causal[:T, :T], float("-inf"))  # no peeking ahead
        att = self.dropout(F.softmax(att, dim=-1))
        return att @ v


class LearnedPositions(PositionalEmbedding):
    """A trained vector per position, added to the token embeddings (GPT-2)."""

    def __init__(self, cfg):
        super().__init__()
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)

    def embed(self, x):
        T = x.size(1)
        return x + self.wpe(torch.arange(T, device=x.device))


class MLP(nn.Module):
    """Linear up to mlp_ratio * n_embd, GELU, linear back down."""

    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg.get("mlp_ratio") * cfg.n_embd)
        if hidden < 1:
            raise ConfigError(f"mlp_ratio {cfg.get('mlp_ratio')} gives an empty MLP")
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


def layernorm(cfg, dim):
    return nn.LayerNorm(dim, bias=cfg.bias)


def no_norm(cfg, dim):
    return nn.Identity()


def no_mlp(cfg):
    return None  # the block skips its feed-forward sublayer
