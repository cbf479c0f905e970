"""SwiGLU (Shazeer, 2020, "GLU Variants Improve Transformer"): a gated MLP.

    out = W_down( silu(W_gate x) * (W_up x) )

Three matrices instead of two, so for the same parameters the hidden layer is narrower:
nanoGPT's GELU MLP has 2 * 4d * d = 8 d^2 weights; with a hidden size h SwiGLU has 3 h d, and
h = 8d/3 makes them equal. The default ``swiglu_ratio`` is 8/3, rounded to a whole number of
units: for n_embd 128, h = 341 and 130,944 weights against the GELU MLP's 131,072 (-0.1%).
Used by PaLM and LLaMA.
"""

import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


def hidden_size(cfg) -> int:
    return round(float(cfg.get("swiglu_ratio")) * cfg.n_embd)


class SwiGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = hidden_size(cfg)
        if hidden < 1:
            raise ConfigError(f"swiglu_ratio {cfg.get('swiglu_ratio')} gives an empty MLP")
        self.hidden = hidden
        self.c_fc = nn.Linear(cfg.n_embd, 2 * hidden, bias=cfg.bias)  # gate and up, at once
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)  # scaled residual init
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).split(self.hidden, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


@hookimpl
def klm_register_mlp(register):
    register(
        "swiglu",
        SwiGLU,
        "SwiGLU gated MLP, hidden 8/3 x n_embd: about the GELU MLP's parameter count",
        options={"swiglu_ratio": 8 / 3},
    )
