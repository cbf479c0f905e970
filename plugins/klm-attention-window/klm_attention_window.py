"""Causal sliding-window attention: each token sees only the last ``window`` tokens.

Position t attends to positions t - window + 1 ... t (itself included), as in Longformer's
local attention and Mistral's sliding window. The band is a cached additive mask (0 inside,
-inf outside) handed with any score bias to torch's fused attention kernel. With a window as
long as the context it is ordinary causal attention.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


class WindowAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        window = cfg.get("window")
        if window < 1:
            raise ConfigError(f"window must be at least 1 token, got {window}; try --set window=32")
        self.dropout = cfg.dropout
        position = torch.arange(cfg.block_size)
        behind = position.view(-1, 1) - position.view(1, -1)  # query t minus key s
        seen = (behind >= 0) & (behind < window)  # s in t - window + 1 ... t
        band = torch.zeros(behind.shape).masked_fill(~seen, float("-inf"))
        self.register_buffer("band", band, persistent=False)

    def forward(self, q, k, v, bias=None):
        T = q.size(-2)
        mask = self.band[:T, :T] if bias is None else bias + self.band[:T, :T]
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=p)


@hookimpl
def klm_register_attention(register):
    register(
        "window",
        WindowAttention,
        "causal attention over the last `window` tokens only",
        provides={"score_bias"},
        options={"window": 32},
    )
