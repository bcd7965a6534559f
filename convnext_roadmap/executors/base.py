"""The one interface every executor has (submit, states, cancel, wait, describe, check), the job states, and the
registry that subclassing fills: an executor's `--executor` name comes from its class, its flags from its
`Options` model."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import RoadmapError
from ..job import Job

# job states that will not change any more (SLURM's words; the local executors use the same)
# (PREEMPTED is not: SLURM requeues a preempted job of ours)
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
            "UNKNOWN"}


@dataclass
class JobState:
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, … or UNKNOWN (the scheduler no longer knows it)
    reason: str = ""  # why a pending job waits (SLURM's reason: Resources, Priority, BeginTime, …)
    elapsed: str = ""


class SchedulerSilent(RoadmapError):
    """The scheduler did not answer (sacct, squeue): the jobs' states are not known, which is not that they ended."""

    def __str__(self) -> str:
        return f"{super().__str__()}: the scheduler's state of the jobs is not known; nothing was changed, try again"


class Options(BaseModel):
    """An executor's options: each field one `roadmap run` flag (`--field-name`), its description the flag's help.
    None (or False) where the command line does not give it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Executor:
    """Runs jobs somewhere. A subclass is registered under its class name in lower case (`--executor NAME`) and
    declares its flags as an `Options` model. `submit` returns the records kept in jobs.json (none for jobs run in
    this process); `blocking` executors return from `submit` only when their jobs have ended."""

    Options: ClassVar[type[Options]] = Options
    registry: ClassVar[dict[str, type[Executor]]] = {}
    name: ClassVar[str] = ""
    blocking: ClassVar[bool] = True
    processes = 1  # processes (DDP ranks) per job

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__.lower()
        Executor.registry[cls.name] = cls

    def __init__(self, experiment_dir: Path, **options):
        self.experiment_dir = Path(experiment_dir)
        try:
            self.options = self.Options(**options)
        except ValidationError as e:
            err = e.errors()[0]
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else f"--executor {self.name}"
            raise RoadmapError(f"{flag}: got {err.get('input')!r}, {err['msg'].lower()}") from None

    def submit(self, jobs: list[Job]) -> list[dict]:
        raise NotImplementedError

    @staticmethod
    def states(records: list[dict]) -> dict[str, JobState]:
        return {}

    @staticmethod
    def cancel(records: list[dict]) -> list[str]:
        return []

    def wait(self, records: list[dict], timeout_min: float | None = None) -> None:
        """Block until the records' jobs have ended (nothing to do for a blocking executor)."""

    def describe(self, jobs: int | None = None) -> str:
        """Where and how the jobs (this many, where known) will run, for the dry run and the first line of a run."""
        return ""

    def no_gpu_reason(self, device: str) -> str | None:
        """Why the jobs would train with no GPU (naming the flag or profile field that decides it), or None when
        they get one. Jobs on this machine: `--device` as this machine resolves it."""
        from ..device import pick_device

        return None if pick_device(device).type == "cuda" else f"--device {device}: this machine has no CUDA device"

    def cpus(self, jobs: int | None = None) -> tuple[int, str]:
        """The CPUs each process of a job will have (for itself and its loader workers), and what decides it in
        words, naming the flag or profile field: in this process, the CPUs it may use."""
        from ..device import cpus_per_process

        n = cpus_per_process()
        return n, f"this process may use {n} CPU(s)"

    def check(self, device: str) -> None:
        """Refuse, before anything runs, what could never run where the jobs go (one RoadmapError line); jobs on
        this machine: a device it has not."""
        from ..device import pick_device

        pick_device(device)


def registry() -> dict[str, type[Executor]]:
    """Every executor by its `--executor` name: each module of this package is imported once, and its subclasses
    of Executor register themselves. A new executor is a new file here, and nothing else."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
    return dict(sorted(Executor.registry.items()))


def make(name: str, experiment_dir: Path, given: dict) -> Executor:
    """The executor `--executor NAME`, from the command line's executor flags (None or False where not given):
    another executor's flag is an error, not ignored without a word."""
    kinds = registry()
    mine = kinds[name].Options.model_fields
    for flag, value in given.items():
        if value not in (None, False) and flag not in mine:
            owners = [k for k, cls in kinds.items() if flag in cls.Options.model_fields]
            raise RoadmapError(f"--{flag.replace('_', '-')} is for --executor {' or '.join(owners)}, not {name}")
    return kinds[name](experiment_dir, **{k: v for k, v in given.items() if k in mine and v is not None})
