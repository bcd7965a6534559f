"""Jobs on this machine, N at once: workers sharing one queue, followed by the launch.

The workers are submitit local jobs, each pinned to its own GPUs (CUDA_VISIBLE_DEVICES) or, on the CPU, to its share
of the cores. A launch's claim files stay under `local/queue-*/` after it: `roadmap status` reads them. What
submitit's controllers print goes to `local/controllers.log`; each worker's own logs are in `local/<pid>/`."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from pydantic import Field

from .. import processes, results
from ..errors import RoadmapError
from ..job import Job
from .base import Executor, JobState, Options
from .injob import CANCELLED, Queue
from .records import last_error_line, mark_failed, outcome_line, record

A_WEEK_MIN = 7 * 24 * 60
STOP_GRACE_S = 120  # how long an interrupted launch waits for its workers to save their runs' places and end
CONTROLLERS_LOG = "controllers.log"  # what submitit's controllers print (in `local/`)


def _cpus() -> int:
    """The CPUs this launch may use (its affinity, not the machine's count)."""
    from ..device import cpus_allowed  # imports torch: not at a launch's --help

    return cpus_allowed()


class Local(Executor):
    """On this machine, N at once. Up to `parallel` workers, submitit local jobs that take the runs from one
    queue (`injob.Queue`), longest first, this process following them. With GPUs, each worker gets `gpus_per_job`
    of its own (one task each, DDP across them through submitit's environment, as on SLURM); on the CPU, `tasks_per_job`
    processes and the cores divided between the workers. A run's job id is `PID_PLACE`, the first worker's pid and
    the run's place in the queue, as a SLURM array task's is `ARRAY_TASK`."""

    class Options(Options):
        parallel: int | None = Field(None, ge=1, description="jobs at once (default: one per GPU, or one per CPU core)")
        gpus_per_job: int | None = Field(None, ge=1, description="GPUs per job, one DDP process each (default 1)")
        tasks_per_job: int | None = Field(None, ge=1, description="DDP processes per job (default: one per GPU of "
                                                                  "the job, or 1)")
        threads_per_job: int | None = Field(None, ge=1, description="CPU threads per process (default: the cores "
                                                                    "divided between the jobs)")

    poll_s = 0.5  # how often the launch looks at the queue

    def __init__(self, experiment_dir: Path, **options):
        import torch

        super().__init__(experiment_dir, **options)
        parallel, gpus_per_job, tasks_per_job, threads_per_job = (
            self.options.parallel, self.options.gpus_per_job, self.options.tasks_per_job, self.options.threads_per_job)
        self.gpus = torch.cuda.device_count()
        if (gpus_per_job or 0) > self.gpus:
            raise RoadmapError(f"--gpus-per-job {gpus_per_job}: this machine has {self.gpus} GPU(s)")
        self.gpus_per_job = (gpus_per_job or 1) if self.gpus else 0
        most = self.gpus // self.gpus_per_job if self.gpus else _cpus()
        self.parallel = min(parallel or most, most) if self.gpus else (parallel or most)
        if self.gpus and tasks_per_job not in (None, self.gpus_per_job):  # NCCL: one rank per GPU
            raise RoadmapError(f"--tasks-per-job {tasks_per_job}: with GPUs, a job has one process per GPU "
                               f"(--gpus-per-job {self.gpus_per_job})")
        self.tasks = self.processes = tasks_per_job or self.gpus_per_job or 1
        self.threads_per_job = threads_per_job

    def check(self, device: str) -> None:
        """A device this machine has; and no GPU index: each worker sees only its own GPUs, counted from 0."""
        from ..device import parse_device
        from .injob import slot_gpus

        super().check(device)
        parsed = parse_device(device)
        if parsed is not None and parsed.index is not None:
            gpu = slot_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), str(parsed.index))
            raise RoadmapError(f"--device {device}: each local worker sees only its own GPU(s), so a GPU number "
                               f"cannot apply; choose the GPUs with CUDA_VISIBLE_DEVICES={gpu} and --device cuda, "
                               f"or train in this process: --executor inprocess --device {device}")

    def slots(self, jobs: int | None = None) -> int:
        """Jobs at once: `parallel`, or fewer when fewer jobs are left."""
        return max(1, min(self.parallel, jobs)) if jobs is not None else self.parallel

    def threads(self, jobs: int | None = None) -> int:
        """CPU threads per process: as asked, or the cores divided between the jobs that run at once (one job
        alone gets them all)."""
        return self.threads_per_job or max(1, _cpus() // (self.slots(jobs) * self.tasks))

    def cpus(self, jobs: int | None = None) -> tuple[int, str]:
        n, why = self.threads(jobs), "--threads-per-job" if self.threads_per_job else \
            f"the {_cpus()} CPUs this launch may use shared by {self.slots(jobs)} job(s) × {self.tasks} " \
            f"process(es)"
        return n, f"--executor local gives each process {n} CPU(s) ({why})"

    def describe(self, jobs: int | None = None) -> str:
        if self.gpus:
            return f"{self.slots(jobs)} job(s) at once, {self.gpus_per_job} GPU(s) each"
        return (f"{self.slots(jobs)} job(s) at once, {self.tasks} process(es) × {self.threads(jobs)} CPU thread(s) "
                f"each")

    def submit(self, jobs: list[Job]) -> list[dict]:
        # the longest first, so that no core idles at the end waiting for one run
        order = sorted(jobs, key=lambda j: -_work(j))
        (self.experiment_dir / "local").mkdir(parents=True, exist_ok=True)
        claims = Path(tempfile.mkdtemp(prefix="queue-", dir=self.experiment_dir / "local"))
        slots, threads = self.slots(len(jobs)), self.threads(len(jobs))
        queue = functools.partial(Queue, order, claims, launch_gpus=os.environ.get("CUDA_VISIBLE_DEVICES"))
        handles: dict[int, object] = {}
        try:
            for slot in range(slots):
                handles[slot] = self._start(queue(slot), slot, threads, len(order))
            workers = [str(h.job_id) for h in handles.values()]
            records = [{**record(job, handles[0], self.name), "job_id": f"{workers[0]}_{i}", "workers": workers,
                        "claim": str(claims / str(i))} for i, job in enumerate(order)]
            results.record_jobs(self.experiment_dir, records)
            self._follow(order, records, handles, claims, queue, threads)
        except BaseException:  # interrupted (Ctrl-C, kill): the jobs started here end too; they resume next time
            self._stop(handles, claims)
            raise
        finally:
            try:  # submitit's folder template, `%j` unexpanded, is left empty: each worker's logs are in its own
                (self.experiment_dir / "local" / "%j").rmdir()
            except OSError:
                pass
        return records

    def _stop(self, handles: dict, claims: Path) -> None:
        """End the workers, each once its run has saved its place (`cancel`'s SIGTERM), waiting up to STOP_GRACE_S;
        the controller of one still alive then is killed, and its tasks end when this launch does (they watch it),
        their runs resuming from their last checkpoints. Interrupted again, this returns at once, likewise."""
        results.write_text(claims / CANCELLED, "")
        live = [h for h in handles.values() if not h.done()]
        print(f"stopping: {len(live)} worker(s) save their runs' places (up to {STOP_GRACE_S} s; interrupt again "
              f"to stop at once)", file=sys.stderr, flush=True)
        for handle in live:
            _signal(str(handle.job_id), signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        while any(not h.done() for h in live) and time.time() < deadline:
            time.sleep(0.2)
        for handle in live:
            if not handle.done():
                _signal(str(handle.job_id), signal.SIGKILL)

    def _follow(self, order: list[Job], records: list[dict], handles: dict, claims: Path, queue,
                threads: int) -> None:
        """Print each run's epochs and its outcome as the workers get through the queue. A run whose worker died
        under it gets a failed summary with the worker's end, and a fresh worker takes that one's place while
        runs wait; a run that no worker reached, when they have all ended, gets one that says so. After `roadmap
        cancel` (its mark in the queue's folder) no worker is replaced, and the runs not reached stay missing."""
        total, done, began = sum(_work(j) for j in order), 0.0, time.time()
        started: dict[int, tuple[int, str, float]] = {}  # queue place → (its worker's slot, its worker, seen when)
        shown, ended = {}, set()
        while len(ended) < len(order):
            time.sleep(self.poll_s)
            cancelled = (claims / CANCELLED).exists()  # before the workers: cancel marks first, then interrupts
            # read before the claims, so that every claim a worker made before it ended is seen in this pass
            over = {slot: h.done() for slot, h in handles.items()}
            for i in range(len(order)):
                claimant = None if i in started else _claimant(claims / str(i))
                if claimant is not None:
                    slot = claimant[0]
                    # an earlier attempt's epochs are not this one's to print again: a resume goes on after them
                    run_dir = Path(order[i].run_dir)
                    started[i], shown[i] = (*claimant, time.time()), (len(results.read_metrics(run_dir)) if (
                        run_dir / "checkpoint.pt").exists() else 0)
                    if shown[i]:
                        print(f"  {order[i].name} seed{order[i].seed}: goes on from its checkpoint "
                              f"({shown[i]} epoch(s) done)", flush=True)
                    log = record(order[i], handles[slot], self.name)
                    records[i] = {**records[i], "stdout": log["stdout"], "stderr": log["stderr"],
                                  "stderr_from": _size(log["stderr"])}  # its worker's log, from this run on
                    results.record_jobs(self.experiment_dir, [records[i]])
            latest = {}
            for i, (slot, _, _) in started.items():
                latest[slot] = max(latest.get(slot, -1), i)
            for i, (slot, _, since) in sorted(started.items()):
                if i in ended:
                    continue
                shown[i] = _print_new_epochs(order[i], shown[i])
                if latest[slot] > i or over[slot]:  # its worker has moved on, or has ended
                    ended.add(i)
                    # left without a summary: its worker was killed (out of memory), or it failed before training
                    mark_failed(records[i], "FAILED" if latest[slot] > i else
                                "CANCELLED" if cancelled else handles[slot].state)
                    done += _work(order[i])
                    print(outcome_line(order[i], time.time() - since) + _progress(len(ended), len(order), done,
                          total, time.time() - began), flush=True)
            waiting, replaced = len(order) > len(started), False
            # a worker that ended in a run (killed, out of memory, a failed DDP run) is replaced while runs wait;
            # one that ended before it claimed any would only end again. Each replacement costs a run: bounded.
            for slot, handle in list(handles.items()):
                if over[slot] and waiting and not cancelled and str(handle.job_id) in {w for _, w, _ in
                                                                            started.values()}:
                    handles[slot], replaced = self._start(queue(slot), slot, threads, len(order)), True
                    workers = [str(h.job_id) for h in handles.values()]
                    for r in records:
                        r["workers"] = workers
                    results.record_jobs(self.experiment_dir, records)
            if waiting and not replaced and all(over.values()):
                # what the workers died of, from their logs (a process group that could not start, …)
                said = next((f": {e}" for h in handles.values() if (e := last_error_line(str(h.paths.stderr)))), "")
                for i in sorted(set(range(len(order))) - set(started)):
                    ended.add(i)
                    job = order[i]
                    if cancelled:
                        print(f"- {job.name} seed{job.seed}: cancelled before it started", flush=True)
                        continue
                    results.write_failure(Path(job.run_dir), job.name, job.seed,
                                          f"not started: the queue's workers ended{said} (their logs: "
                                          f"{claims.parent})")
                    print(outcome_line(job, 0), flush=True)

    def _start(self, work, slot: int, threads: int, runs: int):
        """`work` as a submitit local job, on the GPUs of its slot (none on the CPU) with `threads` threads."""
        import submitit

        executor = submitit.LocalExecutor(folder=self.experiment_dir / "local" / "%j")
        gpus = list(range(slot * self.gpus_per_job, (slot + 1) * self.gpus_per_job))
        # a worker may train every run of the queue: a week for each (submitit's local jobs need a limit)
        executor.update_parameters(timeout_min=A_WEEK_MIN * runs, tasks_per_node=self.tasks,
                                   gpus_per_node=len(gpus), visible_gpus=gpus)
        # through the environment the job inherits, not submitit's `setup` lines: those put a shell between the
        # job's handle and its controller, and cancelling the handle would then leave the job training
        from ..device import CPUS_VAR

        given = {"OMP_NUM_THREADS": str(threads), CPUS_VAR: str(threads)}  # CPU threads; loader workers (auto)
        previous = {name: os.environ.get(name) for name in given}
        os.environ.update(given)
        # the controller and its tasks ignore SIGINT (inherited through exec): a Ctrl-C at the terminal reaches the
        # whole process group, and submitit's controller would answer it by killing its tasks a second later,
        # before they could save. They are stopped with SIGTERM (`cancel`, `_stop`), which the controller passes
        # on to its tasks, and a task takes Ctrl-C again while it trains a run (`train.interrupt`)
        main = threading.current_thread() is threading.main_thread()  # where Python's signal handlers are set
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            # the controller writes to the stderr it inherits: on a cancel or Ctrl-C, a KeyboardInterrupt traceback
            # of its own that is no run's error; into a log, not the terminal (each run's errors are in its logs)
            with _stderr_into(self.experiment_dir / "local" / CONTROLLERS_LOG):
                return executor.submit(work)
        finally:
            if main:
                signal.signal(signal.SIGINT, before)
            for name, value in previous.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value

    @staticmethod
    def states(records: list[dict]) -> dict[str, JobState]:
        """A run not yet claimed from a live queue is pending; one whose worker (the one that claimed it) lives
        and that has not ended is running; otherwise its summary says how it ended."""
        out = {}
        for r in records:
            claimant = _claimant(Path(r["claim"])) if r.get("claim") else (0, r["job_id"])  # before the queue
            alive = any(_controller_alive(w) for w in ([claimant[1]] if claimant else r.get("workers", [r["job_id"]])))
            try:
                status = (results.read_json(Path(r["run_dir"]) / "summary.json") or {}).get("status")
            except RoadmapError:  # a damaged summary must not stop `status` or `cancel`; the table names it
                status = None
            if alive and claimant is None:
                state = "PENDING"
            elif alive and status not in ("completed", "failed"):
                state = "RUNNING"
            else:
                state = {"completed": "COMPLETED", "failed": "FAILED"}.get(status, "UNKNOWN")
            out[r["job_id"]] = JobState(state)
        return out

    @staticmethod
    def cancel(records: list[dict]) -> list[str]:
        """Stop the workers of these runs (SIGTERM, which submitit's controller passes on to its tasks: each saves
        its run's place at the end of its step and ends), once their queue is marked cancelled: the launch that
        follows it must not start workers in their place."""
        for claims in {Path(r["claim"]).parent for r in records if r.get("claim")}:
            if claims.is_dir():
                results.write_text(claims / CANCELLED, "")
        stopped = set()
        for w in {w for r in records for w in r.get("workers", [r["job_id"]])}:
            if _signal(w, signal.SIGTERM):
                stopped.add(w)
        return [r["job_id"] for r in records if stopped & set(r.get("workers", [r["job_id"]]))]


@contextlib.contextmanager
def _stderr_into(path: Path):
    """File descriptor 2 appends to `path` for the block: what a process started in it inherits. Where that cannot
    be arranged (the log cannot be opened, no fd 2), the block runs as it would have without."""
    sys.stderr.flush()
    fd = saved = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        saved = os.dup(2)
    except OSError:
        pass
    if saved is None:
        if fd is not None:
            os.close(fd)
        yield
        return
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(fd)
        os.close(saved)


def _claimant(claim: Path) -> tuple[int, str] | None:
    """(slot, job id) of the worker that claimed a queue place, or None while nobody has (or is still writing)."""
    try:
        slot, worker = claim.read_text().split(" ")
        return int(slot), worker
    except (OSError, ValueError):
        return None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


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
        times = results.epoch_times(m)
        print(f"  {job.name} seed{job.seed}: epoch {m['epoch']}/{total}  loss {m['train_loss']:.3f}  "
              f"top-1 {m['top1']:.1f}%" + (f"  ({times})" if times else "") + results.resumed_note(m), flush=True)
    return max(shown, len(metrics))


def _signal(pid: str, signum: int) -> bool:
    """Send a live controller `signum`; whether it was alive."""
    if not _controller_alive(pid):
        return False
    try:
        os.kill(int(pid), signum)
    except ProcessLookupError:
        return False
    return True


def _controller_alive(pid: str) -> bool:
    """Whether a local job's controller still runs: a process of that pid lives, and it is submitit's (a later
    process given the same pid is not)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return processes.alive(pid) and b"submitit" in cmdline
