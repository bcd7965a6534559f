"""Where jobs run, behind one interface (submit, states, cancel, wait): in this process, on this machine (N at
once, through submitit's local executor) or on SLURM (submitit job arrays). The launcher is chosen in `make`, the
one place that knows the kinds; what a job does inside is `train.run_job`, the same everywhere."""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from pathlib import Path

from .. import results
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


class Executor:
    """Runs jobs somewhere. `submit` returns the records kept in jobs.json (none for jobs run in this process);
    `blocking` executors return from `submit` only when their jobs have ended."""

    kind = ""
    options: tuple[str, ...] = ()  # the `roadmap run` options (argparse names) that are this executor's
    blocking = True
    processes = 1  # processes (DDP ranks) per job

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

    def check(self, device: str) -> None:
        """Refuse, before anything runs, what could never run where the jobs go (one RoadmapError line); jobs on
        this machine: a device it has not."""
        from ..device import pick_device

        pick_device(device)


def _kinds() -> dict[str, type[Executor]]:
    """Every executor, by its `--executor` name: the one place that knows them."""
    from .local import InProcess, Local
    from .slurm import Slurm

    return {cls.kind: cls for cls in (InProcess, Local, Slurm)}


def make(kind: str, experiment_dir: Path, options: dict) -> Executor:
    """The executor of `--executor KIND` (inprocess, local or slurm), given the command line's executor options
    (None or False where not given): another executor's option is an error, not ignored without a word."""
    kinds = _kinds()
    for name, value in options.items():
        if value not in (None, False) and name not in kinds[kind].options:
            owner = next(k for k, cls in kinds.items() if name in cls.options)
            raise RoadmapError(f"--{name.replace('_', '-')} is for --executor {owner}, not {kind}")
    return kinds[kind](experiment_dir, **{k: v for k, v in options.items() if k in kinds[kind].options})


def options() -> list[str]:
    """Every executor's options, in the order the executors declare them."""
    return list(dict.fromkeys(name for cls in _kinds().values() for name in cls.options))


def states(records: list[dict]) -> dict[str, JobState]:
    """The current state of every recorded job, each asked of the executor that ran it."""
    out: dict[str, JobState] = {}
    for kind, cls in _kinds().items():
        mine = [r for r in records if r.get("executor") == kind]
        if mine:
            out.update(cls.states(mine))
    return out


def cancel(records: list[dict]) -> list[str]:
    """Cancel every recorded job that has not ended; returns their ids."""
    live = unfinished(records, states(records))  # one query for all of them
    cancelled = []
    for kind, cls in _kinds().items():
        cancelled += cls.cancel([r for r in live if r.get("executor") == kind])
    return cancelled


def status(experiment_dir: Path) -> list[dict]:
    """One line of facts per submitted (run, seed): job id, state, why it waits, requeues, elapsed, epoch, last
    top-1, logs."""
    records = results.read_jobs(experiment_dir)
    if not records:
        raise RoadmapError(f"{experiment_dir}: no submitted jobs (jobs.json); runs in this process have none")
    now = states(records)
    rows = []
    for r in records:
        run = Path(r["run_dir"])
        metrics = results.read_metrics(run)
        s = now.get(r["job_id"], JobState("UNKNOWN"))
        rows.append({"run": r["name"], "seed": r["seed"], "job_id": r["job_id"], "state": s.state,
                     "reason": s.reason, "requeued": results.read_requeues(run), "elapsed": s.elapsed,
                     "epoch": metrics[-1]["epoch"] if metrics else 0,
                     "top1": round(metrics[-1]["top1"], 1) if metrics else None,
                     "error": (results.read_json(run / "summary.json") or {}).get("error", ""),
                     "stdout": r.get("stdout", ""), "stderr": r.get("stderr", "")})
    return rows


def unfinished(records: list[dict], now: dict[str, JobState]) -> list[dict]:
    """The recorded jobs that have not ended, by their states `now`."""
    return [r for r in records if r["job_id"] in now and now[r["job_id"]].state not in TERMINAL]


def live(records: list[dict], jobs: list[Job], now: dict[str, JobState]) -> dict[tuple[str, int], str]:
    """(run, seed) → where it is queued or running: a recorded job that has not ended (by its states `now`), or a
    live holder of the run's lock (another `roadmap run`, in any executor)."""
    out = {}
    for r in unfinished(records, now):
        out[(r["name"], r["seed"])] = f"{now[r['job_id']].state.lower()} already (job {r['job_id']})"
    for job in jobs:
        holder = results.lock_holder(Path(job.run_dir))
        if holder is not None:
            out.setdefault((job.name, job.seed), results.describe_holder(holder))
    return out


def settle(experiment_dir: Path) -> list[str]:
    """Give every recorded job that ended without a summary (killed, out of memory, timed out for good) a failed
    summary with its root cause, so that the table and the figure show it; returns their lines."""
    records = results.read_jobs(experiment_dir)
    try:
        now = states(records)
    except SchedulerSilent as e:  # settle nothing rather than call queued jobs failed; the table still comes
        return [f"! {e.args[0]}: jobs that ended without a summary are not marked failed this time"]
    lines = []
    for r in records:
        s = now.get(r["job_id"])
        if s is not None and s.state in TERMINAL and s.state != "COMPLETED":
            line = settle_one(r, s.state)
            lines += [line] if line else []
    return lines


def settle_one(record: dict, state: str) -> str | None:
    """A failed summary for one job that ended in `state` without leaving one, unless another live process now
    holds its run; returns its line."""
    run = Path(record["run_dir"])
    if (run / "summary.json").exists() or results.lock_holder(run) is not None:
        return None
    if record.get("claim") and not Path(record["claim"]).exists():  # queued, never reached: missing, not failed
        return None
    error = f"{state}: {last_error_line(record.get('stderr'), record.get('stderr_from', 0)) or 'no error output'}"
    results.write_failure(run, record["name"], record["seed"], error)
    return f"✗ {record['name']} seed{record['seed']}: job {record['job_id']} {error}"


def last_error_line(stderr: str | None, start: int = 0) -> str | None:
    """The root cause in a job's error log (from byte `start` on: a local worker's log holds the runs before this
    one too): its last line that names an error, else its last line; warnings (an image left out names its
    UnidentifiedImageError) are not causes."""
    path = Path(stderr) if stderr else None
    if path is None or not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "warn" not in ln.lower() and "skipping" not in ln]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [None])[-1]


def record(job: Job, handle, kind: str) -> dict:
    """What jobs.json keeps of a submitted job: its run, its id, its executor, its logs, and the config it will
    train (a later request compares its own with it before the job has written the run's config.yaml)."""
    return {"name": job.name, "seed": job.seed, "job_id": str(handle.job_id), "executor": kind,
            "run_dir": job.run_dir, "stdout": str(handle.paths.stdout), "stderr": str(handle.paths.stderr),
            "cfg": job.cfg}


def outcome_line(job: Job, seconds: float) -> str:
    """One line for a job that ended: its top-1 and size, its error, or who else trains its run."""
    try:
        summary = results.read_json(Path(job.run_dir) / "summary.json") or {}
    except RoadmapError as e:  # a line for this run, not the end of the launch that follows the others
        return f"✗ {job.name} seed{job.seed}: {e}"
    holder = results.lock_holder(Path(job.run_dir))
    if summary.get("status") != "completed" and holder is not None:
        return f"= {job.name} seed{job.seed}: {results.describe_holder(holder)}"
    if summary.get("status") != "completed":
        return f"✗ {job.name} seed{job.seed}: {summary.get('error') or 'ended without a summary'}"
    left_out = summary.get("skipped_images") or 0  # on the line a user reads: few open skipped.txt unprompted
    return (f"✓ {job.name} seed{job.seed}: top-1 {summary['final_top1']:.1f}% (best {summary['best_top1']:.1f}), "
            f"{summary['gflops_224']:.2f} GFLOPs at 224², {summary['params'] / 1e6:.1f} M params, {seconds:.0f} s"
            + (f", {left_out} image(s) left out (skipped.txt)" if left_out else "")
            + (f"; not levelled off (its last epochs {summary['last_epochs_below_best']:.1f} below its best)"
               if summary.get("levelled_off") is False else ""))


@contextlib.contextmanager
def process_group():
    """torch.distributed from submitit's environment for the length of the block when the job has several tasks;
    yields whether it has."""
    import submitit
    import torch

    distributed = submitit.JobEnvironment().num_tasks > 1
    if distributed:
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if torch.cuda.is_available():  # NCCL's collectives use the current device: each rank its own
            torch.cuda.set_device(env.local_rank)
        # a finite timeout: a rank that dies must not leave the others waiting for the backend's default 30 min
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                             timeout=datetime.timedelta(minutes=10))
    try:
        yield distributed
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


class SubmittedRun:
    """What a submitit job calls (on SLURM or on this machine): `run_job` inside the job's process group. On a
    time-out or preemption submitit calls `checkpoint`, which requeues the same call: `run_job` resumes from the
    run's last checkpoint."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self) -> dict:
        from ..train import run_job

        with process_group():
            return run_job(self.job)

    def checkpoint(self, *args, **kwargs):
        import submitit

        results.count_requeue(Path(self.job.run_dir))
        return submitit.helpers.DelayedSubmission(SubmittedRun(self.job))
