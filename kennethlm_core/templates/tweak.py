import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


class Starter(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, logits):
        return logits * self.scale


def apply(model, cfg):
    if not hasattr(model, "logits_transform"):
        raise ConfigError("this tweak needs a model with a logits_transform seam (a GPT)")
    model.logits_transform = Starter()


@hookimpl
def klm_register_tweak(register):
    register(
        "$name",
        apply,
        "$summary",
    )
