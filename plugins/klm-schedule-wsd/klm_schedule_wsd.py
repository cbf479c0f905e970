"""Warmup-stable-decay (WSD; e.g. Hu et al., 2024, "MiniCPM"): a trapezoid learning rate.

Warm up linearly, hold the peak for most of the run, then decay linearly to ``wsd_floor``
over the last ``wsd_decay`` fraction of the budget. Unlike cosine, the rate stays at its peak
until the decay starts, so a run can be continued from any point of the stable phase and
decayed later.

Options: ``wsd_warmup`` is the warmup as a fraction of the budget (0, the default, uses the
run's ``warmup_steps`` as the other schedules do); ``wsd_decay`` (0.2) the decay's fraction;
``wsd_floor`` (0.0) the multiplier at the end.
"""

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


def make(cfg):
    warmup, decay, floor = (float(cfg.get(k)) for k in ("wsd_warmup", "wsd_decay", "wsd_floor"))
    if not (0 <= warmup < 1 and 0 <= decay <= 1 and warmup + decay <= 1):
        raise ConfigError(
            f"wsd needs 0 <= wsd_warmup < 1, 0 <= wsd_decay <= 1 and their sum <= 1; "
            f"got wsd_warmup={warmup}, wsd_decay={decay}"
        )
    if not 0 <= floor <= 1:
        raise ConfigError(f"wsd_floor must be in [0, 1], got {floor}")

    def multiplier(step: int, progress: float) -> float:
        progress = min(1.0, max(0.0, progress))
        if warmup > 0:
            rise = min(1.0, progress / warmup)
        else:
            rise = min(1.0, (step + 1) / (cfg.warmup_steps + 1))
        if decay > 0 and progress > 1 - decay:
            fall = floor + (1 - floor) * (1 - progress) / decay
        else:
            fall = 1.0
        return min(rise, fall)

    return multiplier


@hookimpl
def klm_register_schedule(register):
    register(
        "wsd",
        make,
        "warmup-stable-decay: warm up, hold the peak, decay linearly over the last 20%",
        options={"wsd_warmup": 0.0, "wsd_decay": 0.2, "wsd_floor": 0.0},
    )
