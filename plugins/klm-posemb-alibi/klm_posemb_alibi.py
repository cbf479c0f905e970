"""ALiBi, attention with linear biases (Press et al., 2022, "Train Short, Test Long").

No position is added to the embeddings. Instead each head h adds -m_h * (t - s) to the score of
query t for key s: the further back a key, the lower its score, at a head-specific rate. The
slopes m_h form a geometric sequence, 2^(-8/n), 2^(-16/n), ..., 2^(-8) for n heads; when n is
not a power of two, the slopes for the nearest smaller power of two are followed by every other
slope of the next power of two (the paper's rule). The bias needs an attention with a score
matrix (provides "score_bias"); it is cached as a non-persistent buffer and handed to every
block once per forward.
"""

import math

import torch

from kennethlm_core import hookimpl
from kennethlm_core.components import PositionalEmbedding


def alibi_slopes(n_head: int) -> list[float]:
    def geometric(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_head))  # the largest power of two <= n_head
    return geometric(p) + geometric(2 * p)[0::2][: n_head - p]


class ALiBi(PositionalEmbedding):
    def __init__(self, cfg):
        super().__init__()
        slopes = torch.tensor(alibi_slopes(cfg.n_head)).view(-1, 1, 1)  # (H, 1, 1)
        position = torch.arange(cfg.block_size)
        distance = (position.view(1, -1) - position.view(-1, 1)).clamp(max=0)  # s - t <= 0
        self.register_buffer("bias", slopes * distance, persistent=False)  # (H, T, T)

    def score_bias(self, T, device):
        return self.bias[:, :T, :T].to(device)


@hookimpl
def klm_register_posemb(register):
    register(
        "alibi",
        ALiBi,
        "per-head linear penalty on distance, added to attention scores",
        requires={"attention": {"score_bias"}},
    )
