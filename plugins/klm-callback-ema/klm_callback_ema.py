"""An exponential moving average (EMA) of the weights, evaluated in their place.

After every optimizer step the average moves towards the weights,

    ema <- decay * ema + (1 - decay) * weights      (the first step: ema <- weights)

which smooths out the noise of the last few hundred steps (about 1 / (1 - decay) of them).
Every evaluation during training, the final score and the saved ``model.safetensors`` use
the average; training itself goes on with the raw weights, which the checkpoint keeps beside
the average, so a resumed run continues both exactly. The average is kept in float32. It is
the same average as ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``
updated after each step (tested).
"""

import contextlib

import torch

from kennethlm_core import hookimpl
from kennethlm_core.components import Callback
from kennethlm_core.errors import ConfigError


class EMA(Callback):
    def __init__(self, decay: float):
        self.decay = decay
        self.average: dict[str, torch.Tensor] = {}  # empty until the first step

    def stepped(self, loop):
        with torch.no_grad():
            for name, p in loop.model.named_parameters():
                if name not in self.average:
                    self.average[name] = p.detach().float().clone()
                else:
                    self.average[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def evaluating(self, loop):
        if not self.average:  # before the first step: the weights are their own average
            yield
            return
        params = dict(loop.model.named_parameters())
        raw = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(raw[name])

    def state_dict(self):
        return dict(self.average)

    def load_state_dict(self, state):
        self.average = {name: t.float().clone() for name, t in state.items()}


def make(cfg):
    decay = float(cfg.get("ema_decay"))
    if not 0 <= decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1), got {decay}; try 0.99")
    return EMA(decay)


@hookimpl
def klm_register_callback(register):
    register(
        "ema",
        make,
        "an exponential moving average of the weights (ema_decay), evaluated and saved instead",
        options={"ema_decay": 0.99},
    )
