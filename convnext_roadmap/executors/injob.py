"""The code that runs inside a job's process, whichever executor started it: the process group of a multi-task
job, the call a SLURM job makes (and requeues itself with on a time-out or preemption), and the queue a local
worker takes its runs from. Only this module of the executors imports the job (`train.run_job`, in `run`)."""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import time
import traceback
from pathlib import Path

from .. import processes, results
from ..job import Job

CANCELLED = "cancelled"  # in a queue's folder: `roadmap cancel` ended it
# torch.distributed's rendezvous, as torchrun, a Kubeflow pod or a cluster's prolog may leave them in the launch's
# shell: a job's processes set their own
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
LAUNCH_GONE = 75  # a local worker's exit code when it stopped because its launch had died


def run(job: Job) -> dict:
    """The job, in this process."""
    from ..train import run_job  # torch and timm: imported by a job's process, not by a launch's --help

    return run_job(job)


@contextlib.contextmanager
def process_group(device: str):
    """torch.distributed from submitit's environment for the length of the block when the job has several tasks,
    its backend and each rank's GPU from the device the job trains on (`--device`); yields whether it has. The
    rendezvous variables the job's process inherited are dropped first, whether or not it has."""
    import submitit
    import torch

    from ..device import backend, rank_device

    for name in RENDEZVOUS:  # inherited ones are not this job's: submitit would take their port for every job
        os.environ.pop(name, None)  # (concurrent jobs binding one), and refuse to export its own over them
    distributed = submitit.JobEnvironment().num_tasks > 1
    if distributed:  # a port of the job's own, drawn from its job id (as submitit does when none is inherited)
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        mine = rank_device(device, env.local_rank)
        if mine.type == "cuda":  # NCCL's collectives use the current device: each rank its own
            torch.cuda.set_device(mine)
        # a finite timeout: a rank that dies must not leave the others waiting for the backend's default 30 min
        torch.distributed.init_process_group(backend(mine), timeout=datetime.timedelta(minutes=10))
    try:
        yield distributed
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


def slot_gpus(launch_gpus: str | None, positions: str) -> str:
    """A local worker's CUDA_VISIBLE_DEVICES. submitit sets it to the worker's GPUs counted 0, 1, … among those the
    launch sees; where the launch itself saw only some (CUDA_VISIBLE_DEVICES=4,5,6,7, GPU UUIDs, MIG instances),
    those counts are places in its list, and the worker gets the entries there."""
    if not launch_gpus or not positions:
        return positions
    theirs = [entry.strip() for entry in launch_gpus.split(",")]
    return ",".join(theirs[int(place)] for place in positions.split(","))


def _stop_when_gone(pid: int, started: str | None, every_s: float = 1.0) -> None:
    while processes.alive(pid, started):
        time.sleep(every_s)
    print(f"the launch (pid {pid}) has ended without stopping this worker: it stops now; the next `roadmap run` "
          f"resumes its run from its last checkpoint", flush=True)
    os._exit(LAUNCH_GONE)  # from this thread: the training in the main thread ends with the process


class SubmittedRun:
    """What a submitit job calls (on SLURM or on this machine): `run_job` inside the job's process group. On a
    time-out or preemption signal the run finishes its step and saves its place (`train.interrupt`), then hands the
    signal to submitit, which calls `checkpoint`: the same call, requeued, resumes the run there."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self) -> dict:
        with process_group(self.job.device):
            return run(self.job)

    def checkpoint(self, *args, **kwargs):
        import submitit

        results.count_requeue(Path(self.job.run_dir))
        return submitit.helpers.DelayedSubmission(SubmittedRun(self.job))


class Queue:
    """What each worker of a local launch runs: the launch's runs in order, each trained by the first worker to
    claim it (a claim file, created once, that names the worker's slot and job id). A worker pays the start of
    Python with torch and timm (~8 s on a 2017 2-core EPYC) once, not once per run. A run that fails is in its
    summary, and the worker goes on to the next; under DDP it ends instead (a rank may have failed inside a
    collective, and the process group cannot be trusted after it), and the launch starts a fresh worker."""

    def __init__(self, jobs: list[Job], claims: Path, slot: int, launch_gpus: str | None = None):
        self.jobs, self.claims, self.slot = jobs, claims, slot
        self.launch_gpus = launch_gpus  # the launch's own CUDA_VISIBLE_DEVICES, if it had one
        # made in the launch's process, which the worker outlives
        self.launch = (os.getpid(), processes.started(os.getpid()))
        self.parent: int | None = None  # submitit's controller, which the launch watches and cancels

    def __call__(self) -> None:
        import submitit
        import torch

        # before anything asks CUDA: torch reads CUDA_VISIBLE_DEVICES once, when CUDA starts
        os.environ["CUDA_VISIBLE_DEVICES"] = slot_gpus(self.launch_gpus, os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        # a launch killed outright (SIGKILL: the OOM killer, a lost login node) cannot stop its workers: each stops
        # itself, at once, and the next launch resumes its run from the last checkpoint
        threading.Thread(target=_stop_when_gone, args=self.launch, daemon=True, name="launch-watch").start()
        worker = submitit.JobEnvironment().job_id
        self.parent = os.getppid()
        with process_group(self.jobs[0].device) as distributed:  # a launch's jobs share one --device
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
                    run(self.jobs[index])
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
