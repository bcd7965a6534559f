"""Jobs on this machine: in this process one after another, or N workers sharing one queue.

The workers are submitit local jobs, each pinned to its own GPUs (CUDA_VISIBLE_DEVICES) or, on the CPU, to its share
of the cores. A launch's claim files stay under `local/queue-*/` after it: `roadmap status` reads them. What
submitit's controllers print goes to `local/controllers.log`; each worker's own logs are in `local/<pid>/`."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .. import results
from ..errors import RoadmapError
from ..job import Job
from . import Executor, JobState, outcome_line, process_group, record, settle_one

A_WEEK_MIN = 7 * 24 * 60
CANCELLED = "cancelled"  # in a queue's folder: `roadmap cancel` ended it
CONTROLLERS_LOG = "controllers.log"  # what submitit's controllers print (in `local/`)


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
    """Up to `parallel` jobs at once: as many workers, submitit local jobs that take the runs from one queue
    (`Queue`), longest first, this process following them. With GPUs, each worker gets `gpus_per_job` of its own
    (one task each, DDP across them through submitit's environment, as on SLURM); on the CPU, `tasks_per_job`
    processes and the cores divided between the workers. A run's job id is `PID_PLACE`, the first worker's pid and
    the run's place in the queue, as a SLURM array task's is `ARRAY_TASK`."""

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
        order = sorted(jobs, key=lambda j: -_work(j))
        (self.experiment_dir / "local").mkdir(parents=True, exist_ok=True)
        claims = Path(tempfile.mkdtemp(prefix="queue-", dir=self.experiment_dir / "local"))
        slots, threads = self.slots(len(jobs)), self.threads(len(jobs))
        handles: dict[int, object] = {}
        try:
            for slot in range(slots):
                handles[slot] = self._start(Queue(order, claims, slot), slot, threads, len(order))
            workers = [str(h.job_id) for h in handles.values()]
            records = [{**record(job, handles[0], self.kind), "job_id": f"{workers[0]}_{i}", "workers": workers,
                        "claim": str(claims / str(i))} for i, job in enumerate(order)]
            results.record_jobs(self.experiment_dir, records)
            self._follow(order, records, handles, claims, threads)
        except BaseException:  # interrupted (Ctrl-C, kill): the jobs started here end too; they resume next time
            for handle in handles.values():
                handle.cancel(check=False)
            raise
        finally:
            try:  # submitit's folder template, `%j` unexpanded, is left empty: each worker's logs are in its own
                (self.experiment_dir / "local" / "%j").rmdir()
            except OSError:
                pass
        return records

    def _follow(self, order: list[Job], records: list[dict], handles: dict, claims: Path, threads: int) -> None:
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
                    started[i], shown[i] = (*claimant, time.time()), 0
                    log = record(order[i], handles[slot], self.kind)
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
                    settle_one(records[i], "FAILED" if latest[slot] > i else
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
                    handles[slot], replaced = self._start(Queue(order, claims, slot), slot, threads, len(order)), True
                    workers = [str(h.job_id) for h in handles.values()]
                    for r in records:
                        r["workers"] = workers
                    results.record_jobs(self.experiment_dir, records)
            if waiting and not replaced and all(over.values()):
                for i in sorted(set(range(len(order))) - set(started)):
                    ended.add(i)
                    job = order[i]
                    if cancelled:
                        print(f"- {job.name} seed{job.seed}: cancelled before it started", flush=True)
                        continue
                    results.write_failure(Path(job.run_dir), job.name, job.seed,
                                          f"not started: the queue's workers ended (their logs: {claims.parent})")
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
        previous = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(threads)
        # a launch from a script's background ignores SIGINT, and its children would inherit that; but SIGINT is
        # how a submitit controller is cancelled. A handler that does nothing is not inherited (exec resets it),
        # so the controller starts with Python's own, and this process goes on ignoring Ctrl-C meanwhile.
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        if ignored:
            signal.signal(signal.SIGINT, lambda *_: None)
        try:
            # the controller writes to the stderr it inherits: on a cancel or Ctrl-C, a KeyboardInterrupt traceback
            # of its own that is no run's error; into a log, not the terminal (each run's errors are in its logs)
            with _stderr_into(self.experiment_dir / "local" / CONTROLLERS_LOG):
                return executor.submit(work)
        finally:
            if ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if previous is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = previous

    @staticmethod
    def states(records: list[dict]) -> dict[str, JobState]:
        """A run not yet claimed from a live queue is pending; one whose worker (the one that claimed it) lives
        and that has not ended is running; otherwise its summary says how it ended."""
        out = {}
        for r in records:
            claimant = _claimant(Path(r["claim"])) if r.get("claim") else (0, r["job_id"])  # before the queue
            alive = any(_alive(w) for w in ([claimant[1]] if claimant else r.get("workers", [r["job_id"]])))
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
        """Interrupt the workers of these runs (submitit's controller ends its tasks on SIGINT), once their queue
        is marked cancelled: the launch that follows it must not start workers in their place."""
        for claims in {Path(r["claim"]).parent for r in records if r.get("claim")}:
            if claims.is_dir():
                results.write_text(claims / CANCELLED, "")
        stopped = set()
        for w in {w for r in records for w in r.get("workers", [r["job_id"]])}:
            if _alive(w):
                os.kill(int(w), signal.SIGINT)
                stopped.add(w)
        return [r["job_id"] for r in records if stopped & set(r.get("workers", [r["job_id"]]))]


class Queue:
    """What each worker of a local launch runs: the launch's runs in order, each trained by the first worker to
    claim it (a claim file, created once, that names the worker's slot and job id). A worker pays the start of
    Python with torch and timm (~8 s on a 2017 2-core EPYC) once, not once per run. A run that fails is in its
    summary, and the worker goes on to the next; under DDP it ends instead (a rank may have failed inside a
    collective, and the process group cannot be trusted after it), and the launch starts a fresh worker."""

    def __init__(self, jobs: list[Job], claims: Path, slot: int):
        self.jobs, self.claims, self.slot = jobs, claims, slot
        self.parent: int | None = None  # submitit's controller, which the launch watches and cancels

    def __call__(self) -> None:
        import submitit
        import torch

        from ..train import run_job

        worker = submitit.JobEnvironment().job_id
        self.parent = os.getppid()
        with process_group() as distributed:
            rank = torch.distributed.get_rank() if distributed else 0
            index = -1
            while True:
                chosen = [self._claim_after(index, worker) if rank == 0 else None]
                if distributed:
                    torch.distributed.broadcast_object_list(chosen, src=0)
                if chosen[0] is None:
                    return
                index = chosen[0]
                try:
                    run_job(self.jobs[index])
                except Exception:  # noqa: BLE001 - a failed run's summary has its root cause; the queue goes on
                    traceback.print_exc()  # and the log has the whole of it, also of a failure before training
                    if distributed:
                        raise

    def _claim_after(self, index: int, worker: str = "") -> int | None:
        """The first place after `index` that no worker has claimed, now claimed by this one; None when none is
        left. Looking only past its own last place skips nothing: each place before it was taken when it looked.
        The claim is written whole, then linked into place, which fails if another worker's is already there.
        A worker whose controller has died claims nothing more: the launch counts it as ended; nor does one of a
        cancelled queue."""
        if (self.parent is not None and os.getppid() != self.parent) or (self.claims / CANCELLED).exists():
            return None
        mine = self.claims / f".claim.{self.slot}.{os.getpid()}"
        mine.write_text(f"{self.slot} {worker}")
        try:
            for i in range(index + 1, len(self.jobs)):
                try:
                    os.link(mine, self.claims / str(i))
                except FileExistsError:
                    continue
                return i
            return None
        finally:
            mine.unlink()


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
              f"top-1 {m['top1']:.1f}%" + (f"  ({times})" if times else ""), flush=True)
    return max(shown, len(metrics))


def _alive(pid: str) -> bool:
    """Whether a local job's controller (a submitit process of this user) still runs."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline
