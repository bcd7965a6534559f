"""A job: everything one (config, seed) run needs, as plain picklable data; the plan makes it, an executor carries
it, `train.run_job` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    tensorboard: bool = False  # write TensorBoard scalars into the run folder: per epoch, and every log_every steps
    log_every: int = 50
