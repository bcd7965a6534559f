"""Jobs on this machine: one after another in this process, or up to N at once as submitit's local jobs, each
pinned to its own GPUs (CUDA_VISIBLE_DEVICES) or, on the CPU, to its share of the cores."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from .. import results
from ..errors import RoadmapError
from ..job import Job
from . import Executor, JobState, SubmittedRun, outcome_line, record, settle_one

A_WEEK_MIN = 7 * 24 * 60


class InProcess(Executor):
    """Each job in this process, one after another. A failing job is reported and the others go on."""

    kind = "inprocess"

    def __init__(self, experiment_dir: Path, **_):
        self.experiment_dir = experiment_dir

    def describe(self, jobs: int | None = None) -> str:
        return "in this process, one after another"

    def submit(self, jobs: list[Job]) -> list[dict]:
        from ..train import run_job

        for job in jobs:
            start = time.time()
            try:
                run_job(job)
            except Exception:  # noqa: BLE001 - one failed step must not stop the roadmap; it is in its summary
                pass
            print(outcome_line(job, time.time() - start), flush=True)
        return []


class Local(Executor):
    """Up to `parallel` jobs at once through submitit's LocalExecutor, this process scheduling them. With GPUs,
    each job gets `gpus_per_job` of its own (one task each, DDP across them through submitit's environment, as on
    SLURM); on the CPU, `tasks_per_job` processes and the cores divided between the jobs."""

    kind = "local"
    options = ("parallel", "gpus_per_job", "tasks_per_job", "threads_per_job")

    def __init__(self, experiment_dir: Path, parallel: int | None = None, gpus_per_job: int | None = None,
                 tasks_per_job: int | None = None, threads_per_job: int | None = None, poll_s: float = 0.5, **_):
        import torch

        self.experiment_dir = Path(experiment_dir)
        self.gpus = torch.cuda.device_count()
        if (gpus_per_job or 0) > self.gpus:
            raise RoadmapError(f"--gpus-per-job {gpus_per_job}: this machine has {self.gpus} GPU(s)")
        self.gpus_per_job = (gpus_per_job or 1) if self.gpus else 0
        most = self.gpus // self.gpus_per_job if self.gpus else os.cpu_count() or 1
        self.parallel = min(parallel or most, most) if self.gpus else (parallel or most)
        self.tasks = self.processes = tasks_per_job or self.gpus_per_job or 1
        self.threads_per_job = threads_per_job
        self.poll_s = poll_s

    def slots(self, jobs: int | None = None) -> int:
        """Jobs at once: `parallel`, or fewer when fewer jobs are left."""
        return max(1, min(self.parallel, jobs)) if jobs is not None else self.parallel

    def threads(self, jobs: int | None = None) -> int:
        """CPU threads per process: as asked, or the cores divided between the jobs that run at once (one job
        alone gets them all)."""
        return self.threads_per_job or max(1, (os.cpu_count() or 1) // (self.slots(jobs) * self.tasks))

    def describe(self, jobs: int | None = None) -> str:
        if self.gpus:
            return f"{self.slots(jobs)} job(s) at once, {self.gpus_per_job} GPU(s) each"
        return (f"{self.slots(jobs)} job(s) at once, {self.tasks} process(es) × {self.threads(jobs)} CPU thread(s) "
                f"each")

    def submit(self, jobs: list[Job]) -> list[dict]:
        # the longest first, so that no core idles at the end waiting for one run
        queue = sorted(jobs, key=lambda j: -_work(j))
        total, done, began = sum(_work(j) for j in jobs), 0.0, time.time()
        running, records, seen = {}, [], {}
        free, threads = list(range(self.slots(len(jobs)))), self.threads(len(jobs))
        try:
            while queue or running:
                while queue and free:
                    slot, job = free.pop(0), queue.pop(0)
                    handle = self._start(job, slot, threads)
                    records.append(record(job, handle, self.kind))
                    results.record_jobs(self.experiment_dir, [records[-1]])
                    running[slot] = (job, handle, time.time(), records[-1])
                    seen[job.run_dir] = 0
                time.sleep(self.poll_s)
                for slot, (job, handle, start, rec) in list(running.items()):
                    seen[job.run_dir] = _print_new_epochs(job, seen[job.run_dir])
                    if handle.done():
                        del running[slot]
                        free.append(slot)
                        settle_one(rec, handle.state)  # died without a summary: killed, out of memory
                        done += _work(job)
                        print(outcome_line(job, time.time() - start) + _progress(len(records) - len(running),
                              len(jobs), done, total, time.time() - began), flush=True)
        except BaseException:  # interrupted (Ctrl-C, kill): the jobs started here end too; they resume next time
            for _, handle, _, _ in running.values():
                handle.cancel(check=False)
            raise
        return records

    def _start(self, job: Job, slot: int, threads: int):
        """The job as a submitit local job, on the GPUs of its slot (none on the CPU) with `threads` threads."""
        import submitit

        executor = submitit.LocalExecutor(folder=self.experiment_dir / "local" / "%j")
        gpus = list(range(slot * self.gpus_per_job, (slot + 1) * self.gpus_per_job))
        executor.update_parameters(timeout_min=A_WEEK_MIN, tasks_per_node=self.tasks, gpus_per_node=len(gpus),
                                   visible_gpus=gpus)
        # through the environment the job inherits, not submitit's `setup` lines: those put a shell between the
        # job's handle and its controller, and cancelling the handle would then leave the job training
        previous = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            return executor.submit(SubmittedRun(job))
        finally:
            if previous is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = previous

    @staticmethod
    def states(records: list[dict]) -> dict[str, JobState]:
        """A job whose controller process still lives is running; otherwise its summary says how it ended."""
        out = {}
        for r in records:
            if _alive(r["job_id"]):
                out[r["job_id"]] = JobState("RUNNING")
                continue
            summary = results.read_json(Path(r["run_dir"]) / "summary.json") or {}
            out[r["job_id"]] = JobState({"completed": "COMPLETED", "failed": "FAILED"}.get(summary.get("status"),
                                                                                            "UNKNOWN"))
        return out

    @staticmethod
    def cancel(records: list[dict]) -> list[str]:
        import signal

        cancelled = []
        for r in records:
            if _alive(r["job_id"]):
                os.kill(int(r["job_id"]), signal.SIGINT)
                cancelled.append(r["job_id"])
        return cancelled


def _work(job: Job) -> float:
    """What a job costs, for ordering and the time left: the FLOPs it trains at × its epochs."""
    return job.measures.get("trained_gflops", 0) * job.cfg["train"]["epochs"] or 1e-9


def _progress(ended: int, jobs: int, done: float, total: float, elapsed: float) -> str:
    """`  [3/24, about 12 min left]`: the time left extrapolated from the work of the jobs that ended."""
    if ended >= jobs:
        return ""
    return f"  [{ended}/{jobs}, about {math.ceil(elapsed * (total - done) / done / 60)} min left]"


def _print_new_epochs(job: Job, shown: int) -> int:
    """A line for each epoch a running job has finished since the last look; returns how many are shown."""
    metrics = results.read_metrics(Path(job.run_dir))
    total = job.cfg["train"]["epochs"]
    for m in metrics[shown:]:
        print(f"  {job.name} seed{job.seed}: epoch {m['epoch']}/{total}  loss {m['train_loss']:.3f}  "
              f"top-1 {m['top1']:.1f}%", flush=True)
    return max(shown, len(metrics))


def _alive(pid: str) -> bool:
    """Whether a local job's controller (a submitit process of this user) still runs."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline
