"""Uniform averaging over the causal past: the "bag of words" step before self-attention.

Every position's output is the mean of the values at it and before it, y_t = (v_1 + ... + v_t) / t.
Queries and keys are ignored: the weights are fixed, not learned from the data. It is attention
with all scores equal, the step in Karpathy's "Let's build GPT" that shows what a weighted
average over the past can do before the weights depend on the tokens. There are no scores, so
there is nothing a score bias could be added to, and no attention weights to drop out.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl


class MeanAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        past = torch.ones(cfg.block_size, cfg.block_size).tril()  # row t: 1 for s <= t
        self.register_buffer("weights", past / past.sum(dim=1, keepdim=True), persistent=False)

    def forward(self, q, k, v, bias=None):
        if bias is not None:
            raise ValueError("mean attention has no scores and cannot take a score bias")
        T = v.size(-2)
        return self.weights[:T, :T].to(v.dtype) @ v  # row t: 1/(t+1) for s <= t, else 0


@hookimpl
def klm_register_attention(register):
    register("mean", MeanAttention, "uniform average of the values so far (ignores q and k)")
