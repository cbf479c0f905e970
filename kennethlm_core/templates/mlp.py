from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError

RATIO = "${ident}_ratio"  # a setting of its own: --set ${ident}_ratio=2


class Starter(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg.get(RATIO) * cfg.n_embd)
        if hidden < 1:
            raise ConfigError(f"{RATIO} {cfg.get(RATIO)} leaves no hidden units; try 4")
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.relu = nn.ReLU()
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)  # scaled init by this name
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):  # (B, T, n_embd) -> (B, T, n_embd)
        return self.dropout(self.c_proj(self.relu(self.c_fc(x))))


@hookimpl
def klm_register_mlp(register):
    register(
        "$name",
        Starter,
        "$summary",
        options={RATIO: 4.0},  # its default
    )
