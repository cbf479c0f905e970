"""Fixed sinusoidal positions (Vaswani et al., 2017, "Attention Is All You Need").

Position t gets the vector PE[t, 2i] = sin(t / 10000^(2i/C)), PE[t, 2i+1] = cos(t / 10000^(2i/C)),
added to its token's embedding: a wave of a different wavelength on each pair of channels, so
every position has its own pattern and a fixed offset is a linear map of it. Nothing is learned;
the table is computed once and cached as a buffer (not saved with the weights).

``sinusoidal_scale`` multiplies the table (default 1: the paper's table). GPT-2-style token
embeddings start with standard deviation 0.02, so at scale 1 the positions dominate the
residual stream early in training; the paper instead multiplies the embeddings by sqrt(C).
"""

import torch

from kennethlm_core import hookimpl
from kennethlm_core.components import PositionalEmbedding


class SinusoidalPositions(PositionalEmbedding):
    def __init__(self, cfg, base=10000.0):
        super().__init__()
        position = torch.arange(cfg.block_size, dtype=torch.float32).unsqueeze(1)  # (T, 1)
        channel = torch.arange(0, cfg.n_embd, 2, dtype=torch.float32)  # 0, 2, 4, ...
        angle = position / base ** (channel / cfg.n_embd)  # (T, ceil(C/2))
        table = torch.zeros(cfg.block_size, cfg.n_embd)
        table[:, 0::2] = angle.sin()
        table[:, 1::2] = angle.cos()[:, : cfg.n_embd // 2]
        self.register_buffer("table", cfg.get("sinusoidal_scale") * table, persistent=False)

    def embed(self, x):
        return x + self.table[: x.size(1)].to(x.dtype)


@hookimpl
def klm_register_posemb(register):
    register(
        "sinusoidal",
        SinusoidalPositions,
        "fixed sin/cos waves per position, added (Vaswani)",
        options={"sinusoidal_scale": 1.0},
    )
