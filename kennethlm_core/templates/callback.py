import torch

from kennethlm_core import hookimpl
from kennethlm_core.components import Callback


class Starter(Callback):
    def __init__(self):
        self.steps = torch.zeros((), dtype=torch.long)  # a tensor: kept in the checkpoint

    def stepped(self, loop):
        self.steps += 1

    def evaluated(self, loop, row):
        loop.log(f"$name: {int(self.steps)} steps at step {row['step']}")

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"].clone()


@hookimpl
def klm_register_callback(register):
    register(
        "$name",
        lambda cfg: Starter(),
        "$summary",
    )
