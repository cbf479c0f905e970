"""Weights & Biases: a run's figures in a W&B run, online or offline.

``klm run --logger wandb`` starts a W&B run whose files go under the run folder
(``RUN/wandb/``): the config as the run's config, the scalars the Logger base class gives
(train/loss, train/lr, train/tokens_per_s every log_every steps; eval/val_bpb, eval/train_loss,
... at every evaluation), each at its training step, and summary.json, flattened, as the run's
summary. W&B's own settings come from its environment variables: ``WANDB_MODE=offline``
writes the run to ``RUN/wandb/offline-run-*`` for a later ``wandb sync``; ``WANDB_PROJECT``
(default "kennethlm") and ``WANDB_ENTITY`` say where it goes.

In a comparison (``klm compare ... --logger wandb``) the runs share a group, the comparison's
folder name, and each has its arm as job type and the arm and ``seed-N`` as tags, so W&B
shows the comparison as one group. A resumed run continues the W&B run of the same id (kept
in ``RUN/wandb/klm-run-id``).
"""

import importlib.util
import os

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError
from kennethlm_core.loggers import Logger

PROJECT = "kennethlm"
RUN_ID = "klm-run-id"  # in RUN/wandb/: the W&B run id, so that a resumed run continues it


class WandB(Logger):
    name = "wandb"

    def __init__(self):
        super().__init__()
        self.run = None

    def open(self, run):
        import wandb

        saved = run.folder / "wandb" / RUN_ID
        resuming = run.resumed and saved.exists()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            dir=str(run.folder),
            id=saved.read_text().strip() if resuming else None,  # None: a new id
            resume="allow" if resuming else None,
            name=run.name,
            group=run.group or None,
            job_type=run.arm or None,
            tags=run.tags,
            config=run.hparams,
            reinit="finish_previous",  # a run stopped in this process before is over
            settings=wandb.Settings(silent=True, console="off"),
        )
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(self.run.id)

    def scalars(self, values, step):
        self.run.log(values, step=step)

    def summarize(self, values):
        self.run.summary.update(values)

    def close(self):
        if self.run is not None:
            import wandb

            self.run.finish()
            self.run = None
            # finish() can return before W&B's service has written the run's last records:
            # a test read a .wandb file that was still empty. teardown() waits for it.
            wandb.teardown()


def make(cfg):
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "logger 'wandb' needs the wandb package, which is not installed: pip install wandb"
        )
    return WandB()


@hookimpl
def klm_register_callback(register):
    register(
        "wandb",
        make,
        "logger: Weights & Biases (WANDB_MODE=offline: in RUN/wandb), config, losses, lr, "
        "tokens/s, evaluations, summary",
        logger=True,
    )
