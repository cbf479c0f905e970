import torch

from kennethlm_core import hookimpl


def make(cfg, model):
    """The trainer sets each group's lr to the lr it was built with x the schedule's multiplier."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@hookimpl
def klm_register_optimizer(register):
    register(
        "$name",
        make,
        "$summary",
    )
