"""A job: everything one (config, seed) run needs, as plain picklable data; the plan makes it, an executor carries
it, `train.run_job` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

TENSORBOARD_EVERY_STEPS = 50  # optimizer steps between the trackers' training-loss points (`--log-every-steps`)


@dataclass
class Job:
    """Everything a run needs, picklable: where it writes, what it trains, with which seed, on what."""

    run_dir: str
    name: str
    cfg: dict  # a resolved Config, as plain data
    seed: int = 0
    device: str = "auto"
    stop_after: int | None = None  # end this call after that many epochs, leaving a checkpoint (time budgets)
    meta: dict = field(default_factory=dict)  # recorded in the summary: step label, base, experiment
    measures: dict = field(default_factory=dict)  # FLOPs and params as the plan counted them, for the summary
    log: tuple[str, ...] = ()  # trackers (`--log`: tensorboard, wandb): per epoch, and every log_every_steps steps
    log_every_steps: int = TENSORBOARD_EVERY_STEPS
    wandb: dict = field(default_factory=dict)  # W&B's project and entity, where flags named them
