"""Rotary position embedding, RoPE (Su et al., 2021, "RoFormer").

Each head's queries and keys are cut into pairs of channels, and pair i at position t is
rotated by the angle t * base^(-2i/D). A rotation keeps lengths, and the dot product of a query
rotated by angle a with a key rotated by angle b depends on a - b only: attention scores see
the relative distance between tokens, and nothing is added to the embeddings. Pair i is made of
channels i and i + D/2 (the "rotate half" layout). The cos and sin tables are computed once and
cached as buffers (not saved with the weights).
"""

import torch

from kennethlm_core import hookimpl
from kennethlm_core.components import PositionalEmbedding
from kennethlm_core.errors import ConfigError


class RotaryPositions(PositionalEmbedding):
    def __init__(self, cfg):
        super().__init__()
        D = cfg.n_embd // cfg.n_head
        if D % 2:
            raise ConfigError(
                f"rope rotates pairs of channels, so the head dimension must be even; "
                f"n_embd / n_head = {cfg.n_embd} / {cfg.n_head} = {D}; "
                f"try --n-embd {cfg.n_head * (D + 1)}"
            )
        base = cfg.get("rope_base")
        if base <= 1:
            raise ConfigError(f"rope_base must be greater than 1, got {base}; try 10000")
        freq = base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)  # (D/2,)
        angle = torch.arange(cfg.block_size, dtype=torch.float32).unsqueeze(1) * freq  # (T, D/2)
        self.register_buffer("cos", angle.cos().repeat(1, 2), persistent=False)  # (T, D)
        self.register_buffer("sin", angle.sin().repeat(1, 2), persistent=False)

    def rotate(self, q, k):
        T = q.size(-2)
        return rotate(q, self.cos[:T], self.sin[:T]), rotate(k, self.cos[:T], self.sin[:T])


def rotate(x, cos, sin):
    """(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) for the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


@hookimpl
def klm_register_posemb(register):
    register(
        "rope",
        RotaryPositions,
        "rotary: rotates q and k by position, scores see relative distance",
        options={"rope_base": 10000.0},
    )
