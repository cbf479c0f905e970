"""Per-layer residual scalars (modded-nanogpt's "x0 lambdas"): before block i the residual
stream becomes ``lambda_i * x + mu_i * x0``, where x0 is the embedded input, with two learned
scalars per block.

Every block can then re-read the token embeddings directly, however much the stream above it
has been rewritten, and scale down what came before. The scalars start at lambda = 1, mu = 0:
the tweaked model computes exactly what the plain one does until training moves them (tested).
It uses the model's ``block_input`` seam, so it works with any attention, norm or MLP. The
scalars are 1-D parameters, which Muon leaves to AdamW (without weight decay).
"""

import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.model import hold_seam


class ResidualScalars(nn.Module):
    def __init__(self, n_layer: int):
        super().__init__()
        self.keep = nn.Parameter(torch.ones(n_layer))  # lambda: the stream so far
        self.embedded = nn.Parameter(torch.zeros(n_layer))  # mu: the embedded input x0

    def forward(self, i: int, x, xs):
        return self.keep[i] * x + self.embedded[i] * xs[0]  # xs[0]: the embedded input


def apply(model, cfg):
    hold_seam(model, "block_input", "residual-scalars", lambda: ResidualScalars(len(model.blocks)))


@hookimpl
def klm_register_tweak(register):
    register(
        "residual-scalars",
        apply,
        "per-layer learned scalars: x <- lambda x + mu x0 before each block (x0 lambdas)",
        seams={"block_input"},
    )
