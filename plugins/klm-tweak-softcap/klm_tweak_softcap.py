"""Logit soft-capping (Gemma 2; modded-nanogpt): logits <- cap * tanh(logits / cap).

Close to the identity for |logits| much smaller than ``cap``, and smoothly bounded by
+-cap beyond it, so the model cannot become arbitrarily confident: the loss cannot be driven
down by growing the logits alone. ``logit_cap`` (default 15) sets the bound; a char-level
model's logits rarely pass about 10, so smaller caps change more.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


class SoftCap(nn.Module):
    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, logits):
        return self.cap * torch.tanh(logits / self.cap)

    def extra_repr(self):
        return f"cap={self.cap}"


def apply(model, cfg):
    cap = float(cfg.get("logit_cap"))
    if not cap > 0:
        raise ConfigError(f"logit_cap must be positive, got {cap}")
    if not hasattr(model, "logits_transform"):
        raise ConfigError("tweak 'softcap' needs a model with a logits_transform seam (a GPT)")
    model.logits_transform = SoftCap(cap)


@hookimpl
def klm_register_tweak(register):
    register(
        "softcap",
        apply,
        "soft-cap the logits: logit_cap * tanh(logits / logit_cap)",
        options={"logit_cap": 15.0},
    )
