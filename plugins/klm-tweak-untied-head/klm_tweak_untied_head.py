"""An untied, zero-initialised output head (as in modded-nanogpt).

nanoGPT ties the output head to the token embedding: one matrix reads tokens in and scores
them out. This tweak gives ``lm_head`` a weight of its own, initialised to zero, while
``wte`` keeps the embedding it was initialised with. At the start every token gets the same
logit (a uniform prediction, loss = ln V) and the head learns from there; the embedding no
longer has to serve both ends. Costs vocab_size x n_embd more parameters.
"""

import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


def apply(model, cfg):
    head, wte = getattr(model, "lm_head", None), getattr(model, "wte", None)
    if not isinstance(head, nn.Linear) or not isinstance(wte, nn.Embedding):
        raise ConfigError("tweak 'untied-head' needs a model with wte and lm_head (a GPT)")
    head.weight = nn.Parameter(torch.zeros_like(head.weight))  # wte keeps the old one


@hookimpl
def klm_register_tweak(register):
    register("untied-head", apply, "an output head of its own, untied from wte, starting at 0")
