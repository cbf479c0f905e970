"""Squared ReLU (So et al., 2021, "Primer"): the MLP's nonlinearity is relu(x)^2.

Same shape as nanoGPT's MLP (linear up to mlp_ratio * n_embd, nonlinearity, linear down), so
the same parameter count; only GELU is replaced by max(0, x)^2, which is cheaper and sparser
(exact zeros for negative inputs) and was found to train faster in Primer's search.
"""

import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


class ReLU2MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg.get("mlp_ratio") * cfg.n_embd)
        if hidden < 1:
            raise ConfigError(f"mlp_ratio {cfg.get('mlp_ratio')} gives an empty MLP")
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)  # scaled residual init
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.relu(self.c_fc(x)).square()))


@hookimpl
def klm_register_mlp(register):
    register(
        "relu2",
        ReLU2MLP,
        "squared ReLU MLP (Primer): linear up, relu(x)^2, linear down",
        options={"mlp_ratio": 4.0},
    )
