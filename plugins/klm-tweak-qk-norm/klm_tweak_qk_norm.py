"""QK-norm (Henry et al., 2020; Dehghani et al., 2023): RMS-normalise queries and keys.

Each head's query and key vectors are divided by their root-mean-square (with a learned gain
per channel, starting at 1) before the positional embedding rotates them and the scores
q . k / sqrt(D) are taken. Scores are then bounded by the gains, however large the
activations grow, which keeps the softmax from saturating and lets a model train at higher
learning rates. The tweak puts one ``QKNorm`` into every attention block's ``qk_transform``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


class QKNorm(nn.Module):
    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.q_gain = nn.Parameter(torch.ones(head_dim))
        self.k_gain = nn.Parameter(torch.ones(head_dim))

    def forward(self, q, k):  # (B, H, T, D) each
        D = q.size(-1)
        return (
            F.rms_norm(q, (D,), self.q_gain.to(q.dtype), self.eps),
            F.rms_norm(k, (D,), self.k_gain.to(k.dtype), self.eps),
        )


def apply(model, cfg):
    attentions = [m for m in model.modules() if hasattr(m, "qk_transform")]
    if not attentions:
        raise ConfigError("tweak 'qk-norm' needs attention blocks with a qk_transform (a GPT)")
    for attn in attentions:
        attn.qk_transform = QKNorm(cfg.n_embd // cfg.n_head)


@hookimpl
def klm_register_tweak(register):
    register("qk-norm", apply, "RMS-normalise queries and keys per head (learned gains)")
