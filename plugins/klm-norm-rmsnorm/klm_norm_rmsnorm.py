"""RMSNorm (Zhang & Sennrich, 2019): divide by the root-mean-square, then a learned gain.

LayerNorm subtracts the mean, divides by the standard deviation, and adds a bias; RMSNorm
keeps only the rescaling: y = x / sqrt(mean(x^2) + eps) * g. One reduction instead of two,
no bias, and in practice as good. Used by T5, LLaMA and most recent small-model recipes.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # the gain, one per channel

    def forward(self, x):  # (..., dim), each position on its own
        # the statistic in float32 even under bf16 autocast: a mean of squares loses digits
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        rms_inv = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xf * rms_inv).type_as(x) * self.weight


def make(cfg, dim):
    return RMSNorm(dim, eps=float(cfg.get("rms_eps")))


@hookimpl
def klm_register_norm(register):
    register(
        "rmsnorm",
        make,
        "RMSNorm: divide by the root-mean-square, then a learned gain (no mean, no bias)",
        options={"rms_eps": 1e-6},
    )
