"""Where jobs run, behind one interface (`base.Executor`: submit, states, cancel, wait): in this process
(`inprocess`), on this machine N at once (`local`, submitit's local executor) or on SLURM (`slurm`, submitit job
arrays). Each registers itself by subclassing; `records` answers for the jobs of jobs.json across executors, and
`injob` is what runs inside a job's process. What a job does is `train.run_job`, the same everywhere."""

from .base import TERMINAL, Executor, JobState, Options, SchedulerSilent, make, registry
from .injob import SubmittedRun  # where SLURM jobs pickled before the split look for it

__all__ = ["TERMINAL", "Executor", "JobState", "Options", "SchedulerSilent", "SubmittedRun", "make",
           "registry"]
