"""Jobs on a SLURM cluster through submitit: the cluster profile, job arrays, states from sacct/squeue, waiting,
cancelling."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .. import results
from ..config import ClusterProfile
from ..errors import RoadmapError
from ..loading import Merged, load_yaml, validate
from ..resources import SLURM, shown
from ..train import Job
from . import TERMINAL, Executor, JobState, SubmittedRun
from .local import _record

PROFILE_FLAGS = {"partition": str, "gpus_per_node": int, "tasks_per_node": int, "nodes": int, "timeout_min": int,
                 "account": str, "qos": str, "constraint": str, "mem_gb": int, "cpus_per_task": int}


def load_profile(name: str, flags: dict) -> ClusterProfile:
    """A cluster profile (slurm/NAME.yaml or a file), with command-line flags on top."""
    path = Path(name) if Path(name).suffix else SLURM / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SLURM.glob("*.yaml")))
        raise RoadmapError(f"--cluster {name}: no such profile (profiles in slurm/: {known})")
    merged = Merged().merge(load_yaml(path), shown(path))
    for key, value in flags.items():
        if value is not None:
            merged.merge({key: value}, f"--{key.replace('_', '-')}")
    return validate(merged, ClusterProfile)


class Slurm(Executor):
    """One job per (run, seed), all of them one job array; `submit` returns as soon as SLURM has them."""

    kind = "slurm"
    blocking = False

    def __init__(self, experiment_dir: Path, profile: ClusterProfile | None = None, **_):
        if shutil.which("sbatch") is None:
            raise RoadmapError("--executor slurm: no sbatch on PATH (is this a SLURM login node? "
                               "slurm/local-cluster/up.sh brings up a one-node cluster here)")
        self.experiment_dir = Path(experiment_dir)
        self.profile = profile or ClusterProfile()

    def describe(self) -> str:
        from ..loading import to_yaml

        return "SLURM jobs, one per run and seed, as one array; sbatch parameters:\n" + to_yaml(self.profile)

    def submit(self, jobs: list[Job]) -> list[dict]:
        import submitit

        p = self.profile
        executor = submitit.SlurmExecutor(folder=self.experiment_dir / "slurm" / "%j", max_num_timeout=p.max_requeues)
        extra = dict(p.additional_parameters)
        executor.update_parameters(
            job_name=f"roadmap-{self.experiment_dir.name}", nodes=p.nodes, ntasks_per_node=p.tasks(),
            cpus_per_task=p.cpus_per_task, time=p.timeout_min, array_parallelism=p.array_parallelism,
            **({"gpus_per_node": p.gpus_per_node} if p.gpus_per_node else {}),
            **({"mem": f"{p.mem_gb}GB"} if p.mem_gb else {}),
            **{k: getattr(p, k) for k in ("partition", "account", "qos", "constraint") if getattr(p, k)},
            **({"additional_parameters": extra} if extra else {}))
        with executor.batch():
            handles = [executor.submit(SubmittedRun(job)) for job in jobs]
        records = [_record(job, handle, self.kind) for job, handle in zip(jobs, handles)]
        results.record_jobs(self.experiment_dir, records)
        return records

    @staticmethod
    def states(records: list[dict]) -> dict[str, JobState]:
        """SLURM's view of the jobs, by job id: sacct for what accounting knows, squeue for the rest."""
        ids = [r["job_id"] for r in records]
        out: dict[str, JobState] = {}
        if not ids:
            return out
        for line in _query(["sacct", "-n", "-P", "-X", "-o", "JobID,State,Elapsed", "-j", ",".join(ids)]):
            job_id, state, elapsed = (line.split("|") + ["", ""])[:3]
            out[job_id] = JobState(state.split()[0] if state else "UNKNOWN", "", elapsed)
        missing = [i for i in ids if i not in out]
        if missing:
            for line in _query(["squeue", "-h", "-o", "%i|%T|%M|%r", "-j", ",".join(missing)]):
                job_id, state, elapsed, reason = (line.split("|") + ["", "", ""])[:4]
                out[job_id] = JobState(state, reason, elapsed)
        return out

    @staticmethod
    def cancel(records: list[dict]) -> list[str]:
        ids = sorted({r["job_id"] for r in records})
        if ids:
            subprocess.run(["scancel", *ids], check=True, timeout=60)
        return ids

    def wait(self, records: list[dict], timeout_min: float | None = None, poll_s: float = 5.0) -> None:
        """Block until every job has ended, printing the counts of job states as they change."""
        last = None
        while True:
            now = self.states(records)
            counts: dict[str, int] = {}
            for r in records:
                state = now.get(r["job_id"], JobState("PENDING")).state
                counts[state] = counts.get(state, 0) + 1
            line = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
            if line != last:
                print(f"  [{time.strftime('%H:%M:%S')}] {line}", flush=True)
                last = line
            if all(now.get(r["job_id"], JobState("PENDING")).state in TERMINAL for r in records):
                return
            time.sleep(poll_s)


def _query(command: list[str]) -> list[str]:
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return out.stdout.splitlines()
