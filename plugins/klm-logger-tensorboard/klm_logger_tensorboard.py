"""TensorBoard event files in the run folder, written with torch.utils.tensorboard.

``klm run --logger tensorboard`` writes ``RUN/tensorboard/events.out.tfevents.*``: the config
as hyperparameters (the HParams dashboard) and as text, the scalars the Logger base class
gives (train/loss, train/lr, train/tokens_per_s every log_every steps; eval/val_bpb,
eval/train_loss, ... at every evaluation) and the final summary as summary/... scalars at the
last step. ``tensorboard --logdir runs`` shows every run; ``--logdir experiments/NAME`` shows a
comparison, one line per arm and seed (each run folder holds its own event files).

A resumed run writes a new event file that starts with TensorBoard's purge marker just after
the step it continues from (``purge_step``), so that points a stopped process wrote after its
last checkpoint are hidden and the trajectory is one line; a new run's marker is at step 0,
which hides a run it replaced (--force).
"""

import json

from kennethlm_core import hookimpl
from kennethlm_core.loggers import Logger

FOLDER = "tensorboard"


class TensorBoard(Logger):
    name = "tensorboard"

    def __init__(self):
        super().__init__()
        self.writer = None
        self.step = 0

    def open(self, run):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # a resumed run hides what was logged after its checkpoint (at run.step); a new one,
        # everything before it (the run it replaces, with --force)
        purge = run.step + 1 if run.resumed else 0
        self.writer = SummaryWriter(str(run.folder / FOLDER), purge_step=purge)
        self.step = run.step
        # the HParams dashboard: the settings, and the final val_bpb as the metric to sort by
        values = {k: _hparam(v) for k, v in run.hparams.items()}
        values.update(arm=run.arm, group=run.group)
        for summary in hparams(values, {"summary/val_bpb": None}):
            self.writer.file_writer.add_summary(summary)
        config = json.dumps(run.hparams, indent=2, default=str)
        self.writer.add_text("config", f"```\n{config}\n```", run.step)
        self.writer.flush()

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.step = step
        self.writer.flush()  # a stopped run keeps what it logged

    def summarize(self, values):
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"summary/{key}", value, self.step)
        text = json.dumps(values, indent=2, default=str)
        self.writer.add_text("summary", f"```\n{text}\n```", self.step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _hparam(value):
    """What the HParams dashboard takes: a number, a string or a bool."""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


def make(cfg):
    return TensorBoard()


@hookimpl
def klm_register_callback(register):
    register(
        "tensorboard",
        make,
        "logger: TensorBoard event files in RUN/tensorboard (config, losses, lr, tokens/s, "
        "evaluations, summary)",
        logger=True,
    )
