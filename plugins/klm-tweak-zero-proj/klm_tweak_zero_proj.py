"""Zero-initialised residual projections (as in modded-nanogpt; cf. "ReZero", Bachlechner
et al., 2020, and Fixup, Zhang et al., 2019).

Every block's output projections, attention ``c_proj`` and MLP ``c_proj``, start at zero
instead of GPT-2's N(0, 0.02 / sqrt(2 n_layer)). At initialisation every block is then the
identity on the residual stream and the network is just embedding -> final norm -> head;
the blocks switch themselves on as the projections learn (their gradients are not zero,
since their inputs are not). Biases, if any, are zeroed too (they already are).
"""

import torch

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


@torch.no_grad()
def apply(model, cfg):
    projections = [m for n, m in model.named_modules() if n.endswith("c_proj")]
    if not projections:
        raise ConfigError("tweak 'zero-proj' needs residual projections named c_proj (a GPT)")
    for m in projections:
        for p in m.parameters(recurse=False):
            p.zero_()


@hookimpl
def klm_register_tweak(register):
    register("zero-proj", apply, "zero-initialise the residual projections (every c_proj)")
