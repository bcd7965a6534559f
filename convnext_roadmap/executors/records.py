"""The job records of jobs.json, across executors: what each recorded job's state is (asked of the executor that
ran it), cancelling them, the status lines, which runs are live, and a failed summary for every job that ended
without one; the one-line outcome of a job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import results
from ..errors import RoadmapError
from ..job import Job
from .base import TERMINAL, JobState, SchedulerSilent, registry


def record(job: Job, handle, executor: str) -> dict:
    """What jobs.json keeps of a submitted job: its run, its id, its executor, its logs, and the config it will
    train (a later request compares its own with it before the job has written the run's config.yaml)."""
    return {"name": job.name, "seed": job.seed, "job_id": str(handle.job_id), "executor": executor,
            "run_dir": job.run_dir, "stdout": str(handle.paths.stdout), "stderr": str(handle.paths.stderr),
            "cfg": job.cfg}


def states(records: list[dict]) -> dict[str, JobState]:
    """The current state of every recorded job, each asked of the executor that ran it."""
    out: dict[str, JobState] = {}
    for name, cls in registry().items():
        mine = [r for r in records if r.get("executor") == name]
        if mine:
            out.update(cls.states(mine))
    return out


def unfinished(records: list[dict], now: dict[str, JobState]) -> list[dict]:
    """The recorded jobs that have not ended, by their states `now`."""
    return [r for r in records if r["job_id"] in now and now[r["job_id"]].state not in TERMINAL]


def cancel(records: list[dict]) -> list[str]:
    """Cancel every recorded job that has not ended; returns their ids."""
    live_ones = unfinished(records, states(records))  # one query for all of them
    cancelled = []
    for name, cls in registry().items():
        cancelled += cls.cancel([r for r in live_ones if r.get("executor") == name])
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


@dataclass
class Standing:
    """Where a request's jobs stand before it submits anything: what is queued or running, what it will train, what
    has finished."""

    recorded: list[dict]  # jobs.json's records of the request's (run, seed)s
    live: dict[tuple[str, int], str]  # (run, seed) → where it is queued or running (`live`)
    queued: dict[tuple[str, int], tuple[dict, str]]  # (run, seed) → (the config its live job trains, where)
    finished: set[tuple[str, int]]  # runs whose summary says completed
    notes: list[str] = field(default_factory=list)  # what could not be known, in words


def standing(experiment_dir: Path, jobs: list[Job], scheduler_may_be_silent: bool = False) -> Standing:
    """The one look at what is on disk and queued for `jobs`: their recorded jobs' states (asked of each executor
    once), the live holders of their run folders, their finished runs. A scheduler that does not answer is an
    error, or with `scheduler_may_be_silent` (a dry run) a note, every job then taken as not queued."""
    recorded, notes = results.read_jobs(experiment_dir), []
    try:
        now = states(recorded)
    except SchedulerSilent as e:
        if not scheduler_may_be_silent:
            raise
        notes.append(f"{e.args[0]}: the dry run does not know which jobs are queued")
        now = {}
    where = live(recorded, jobs, now)  # queued or running: left alone, and what they train binds the request
    queued = {(r["name"], r["seed"]): (r["cfg"], where[(r["name"], r["seed"])])
              for r in unfinished(recorded, now) if "cfg" in r}
    keys = {(j.name, j.seed) for j in jobs}
    return Standing([r for r in recorded if (r["name"], r["seed"]) in keys], where, queued,
                    {(j.name, j.seed) for j in jobs if results.is_done(Path(j.run_dir))}, notes)


def mark_ended_failed(experiment_dir: Path) -> list[str]:
    """Give every recorded job that ended without a summary (killed, out of memory, timed out for good) a failed
    summary with its root cause, so that the table and the figure show it; returns their lines."""
    records = results.read_jobs(experiment_dir)
    try:
        now = states(records)
    except SchedulerSilent as e:  # mark nothing rather than call queued jobs failed; the table still comes
        return [f"! {e.args[0]}: jobs that ended without a summary are not marked failed this time"]
    lines = []
    for r in records:
        s = now.get(r["job_id"])
        if s is not None and s.state in TERMINAL and s.state != "COMPLETED":
            line = mark_failed(r, s.state)
            lines += [line] if line else []
    return lines


def mark_failed(record: dict, state: str) -> str | None:
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
