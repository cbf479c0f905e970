"""U-net skip connections (as in modded-nanogpt's speedrun records): the first half of the
blocks is an encoder, the second half a decoder, and each decoder block also reads the stream
that entered its mirror image in the encoder, through a learned weight:

    before block i (i >= n_layer - n_layer // 2):  x <- x + w_i * xs[n_layer - 1 - i]

where ``xs[j]`` is the stream as it came to block j (the embedded input for j = 0). With four
blocks, block 2 reads what block 1 was given and block 3 the embedded input. The weights start
at zero, so the tweaked model starts out computing exactly what the plain one does (tested);
they are scalars, which Muon leaves to AdamW. It uses the model's ``block_input`` seam.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import hold_seam


class UNetSkips(nn.Module):
    def __init__(self, n_layer: int):
        super().__init__()
        if n_layer < 2:
            raise ConfigError("tweak 'unet-skips' needs at least 2 blocks (--n-layer 2)")
        self.n_layer = n_layer
        self.first_decoder = n_layer - n_layer // 2
        self.weights = nn.Parameter(torch.zeros(n_layer // 2))

    def forward(self, i: int, x, xs):
        if i < self.first_decoder:
            return x
        return x + self.weights[i - self.first_decoder] * xs[self.n_layer - 1 - i]


def apply(model, cfg):
    hold_seam(model, "block_input", "unet-skips", lambda: UNetSkips(len(model.blocks)))


@hookimpl
def klm_register_tweak(register):
    register(
        "unet-skips",
        apply,
        "U-net skips: each block of the second half also reads its mirror block's input",
        seams={"block_input"},
    )
