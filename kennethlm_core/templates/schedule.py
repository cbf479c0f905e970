from kennethlm_core import hookimpl


def make(cfg):
    floor = cfg.min_lr_ratio

    def multiplier(step, progress):  # progress runs from 0 to 1 over the budget
        warmup = min(1.0, (step + 1) / (cfg.warmup_steps + 1))
        return min(warmup, 1.0 - (1.0 - floor) * min(1.0, progress))

    return multiplier


@hookimpl
def klm_register_schedule(register):
    register(
        "$name",
        make,
        "$summary",
    )
