"""Attention through torch's fused kernel, F.scaled_dot_product_attention.

The same computation as the built-in ``naive`` attention, softmax(QK^T/sqrt(d) + bias) V with a
causal mask, handed to one fused kernel that never writes the T x T attention matrix to memory:
FlashAttention on CUDA, the best kernel torch has elsewhere. Without a score bias the kernel
applies the causal mask itself (``is_causal=True``); with one, the bias and the causal mask are
added into one float mask, and torch picks a kernel that takes a mask.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl


class FlashAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dropout = cfg.dropout
        future = torch.full((cfg.block_size, cfg.block_size), float("-inf")).triu(1)
        self.register_buffer("causal", future, persistent=False)  # 0 on and below the diagonal

    def forward(self, q, k, v, bias=None):
        p = self.dropout if self.training else 0.0
        if bias is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        T = q.size(-2)
        mask = (bias + self.causal[:T, :T]).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


@hookimpl
def klm_register_attention(register):
    register(
        "flash",
        FlashAttention,
        "torch scaled_dot_product_attention: a fused kernel (flash on CUDA)",
        provides={"score_bias"},
    )
