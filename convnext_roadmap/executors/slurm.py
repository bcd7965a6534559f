"""Jobs on a SLURM cluster through submitit: the cluster profile checked against what the partition can ever give,
job arrays split at the cluster's MaxArraySize, states and pending reasons from sacct/squeue, waits that end,
cancelling."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from pydantic import Field, create_model

from .. import results
from ..config import ClusterProfile
from ..errors import RoadmapError
from ..job import Job
from ..loading import Merged, load_yaml, validate
from ..resources import SLURM, shown
from .base import TERMINAL, Executor, JobState, Options, SchedulerSilent
from .injob import SubmittedRun
from .records import record
# pending reasons that no amount of waiting clears: the request itself cannot be met, or the job is held (squeue's %r)
NEVER = {"PartitionConfig": "the request exceeds what the partition allows",
         "PartitionNodeLimit": "more nodes than the partition allows",
         "PartitionTimeLimit": "a time limit above the partition's MaxTime",
         "BadConstraints": "no node has the features asked for",
         "InvalidAccount": "the account is not valid", "InvalidQOS": "the QOS is not valid",
         "DependencyNeverSatisfied": "a dependency that can never be met",
         "JobHeldUser": "held by its user until `scontrol release`",
         "JobHeldAdmin": "held by an administrator"}


def load_profile(name: str, flags: dict) -> tuple[ClusterProfile, Callable[[str], str]]:
    """A cluster profile, with command-line flags on top; and, for error lines, the source (file or flag) of each
    field. A name is one of the project's profiles (slurm/NAME.yaml), else ./slurm/NAME.yaml here (where an
    installed package's user keeps theirs); anything else is a file."""
    named = [SLURM / f"{name}.yaml", Path("slurm") / f"{name}.yaml"] if not Path(name).suffix else []
    path = next((p for p in named if p.is_file()), Path(name))
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SLURM.glob("*.yaml")))
        raise RoadmapError(f"--cluster {name}: no such profile or file (profiles: {known}, or ./slurm/NAME.yaml)")
    merged = Merged().merge(load_yaml(path), shown(path))
    for key, value in flags.items():
        if value is not None:
            merged.merge({key: value}, f"--{key.replace('_', '-')}")
    return validate(merged, ClusterProfile), merged.source_of


def _profile_overrides() -> type[Options]:
    """--cluster, and a flag for each scalar field of the cluster profile that overrides it (declared once, in
    ClusterProfile)."""
    fields = {name: (field.annotation | None, Field(None, description=f"override the profile's {name}"))
              for name, field in ClusterProfile.model_fields.items()
              if not isinstance(field.default, (dict, list))}
    return create_model("Options", __base__=Options, __module__=__name__,
                        cluster=(str | None, Field(None, description="a cluster profile: slurm/PROFILE.yaml or a "
                                                                      "YAML file (default: slurm/default.yaml)")),
                        **fields)


class Slurm(Executor):
    """SLURM jobs, one per run and seed. Job arrays of at most the cluster's MaxArraySize; `submit` returns as soon
    as SLURM has them."""

    Options = _profile_overrides()
    blocking = False

    def __init__(self, experiment_dir: Path, **options):
        """`cluster`: the profile (default: slurm/default.yaml); the other options override its fields."""
        if shutil.which("sbatch") is None:
            raise RoadmapError("--executor slurm: no sbatch on PATH (is this a SLURM login node? "
                               "slurm/local-cluster/up.sh brings up a local cluster here)")
        super().__init__(experiment_dir, **options)
        flags = self.options.model_dump(exclude={"cluster"})  # each field's constraint is the profile's to check
        self.profile, self.source_of = load_profile(self.options.cluster or "default", flags)
        self.processes = self.profile.nodes * self.profile.tasks()

    def describe(self, jobs: int | None = None) -> str:
        from ..loading import to_yaml

        return "SLURM jobs, one per run and seed, as job arrays; sbatch parameters:\n" + to_yaml(self.profile)

    def check(self, device: str) -> None:
        """Refuse, before anything is submitted, a request that the partition could never run (the device is the
        nodes', not this machine's)."""
        from ..device import parse_device

        p, parsed = self.profile, parse_device(device)
        self._check_profile(parsed)
        limits = partition_limits(p.partition)
        if limits is None:
            raise RoadmapError(f"{self.source_of('partition')}: partition: {p.partition or 'the default partition'}:"
                               f" sinfo knows no such partition")
        where = f"partition {limits['name']}"

        def refuse(key: str, text: str):
            raise RoadmapError(f"{self.source_of(key)}: {key}: {text} (sinfo/scontrol; a profile that fits: "
                               f"--cluster local for slurm/local-cluster)")

        if parsed is not None and parsed.type == "cuda" and not p.gpus_per_node:
            raise RoadmapError(f"{self.source_of('gpus_per_node')}: gpus_per_node: 0, but --device {device} trains "
                               f"on a GPU (--gpus-per-node N)")

        cpus = p.cpus() * p.tasks()
        if limits["cpus"] and cpus > limits["cpus"]:
            refuse("cpus_per_task", f"{p.cpus()} CPU(s) × {p.tasks()} task(s) per node = {cpus}, but the "
                                    f"nodes of {where} have at most {limits['cpus']}")
        if p.mem_gb and limits["mem_mb"] and p.mem_gb * 1024 > limits["mem_mb"]:
            refuse("mem_gb", f"{p.mem_gb} GB per node, but the nodes of {where} have at most "
                             f"{limits['mem_mb'] / 1024:.1f} GB")
        if p.gpus_per_node > limits["gpus"]:
            refuse("gpus_per_node", f"{p.gpus_per_node} GPU(s) per node, but the nodes of {where} have "
                                    f"{limits['gpus'] or 'none'}")
        if p.nodes > limits["nodes"]:
            refuse("nodes", f"{p.nodes} nodes, but {where} has {limits['nodes']}")
        if limits["max_min"] is not None and p.timeout_min > limits["max_min"]:
            refuse("timeout_min", f"{p.timeout_min} min, but {where} allows at most {limits['max_min']} min")

    def _check_profile(self, parsed) -> None:
        """The profile's own consistency, before what the cluster can give: a GPU job has one task per GPU (NCCL
        takes one rank per GPU)."""
        p = self.profile
        if not p.gpus_per_node or (parsed is not None and parsed.type == "cpu") or p.tasks() == p.gpus_per_node:
            return
        what = ("two or more processes on one GPU, which NCCL refuses (\"Duplicate GPU detected\") after the "
                "queue's wait" if p.tasks() > p.gpus_per_node else
                (f"GPU {p.tasks()}" if p.tasks() == p.gpus_per_node - 1 else f"GPUs {p.tasks()}-{p.gpus_per_node - 1}")
                + " of each node idle")
        raise RoadmapError(f"{self.source_of('tasks_per_node')}: tasks_per_node: {p.tasks()}, but gpus_per_node: "
                           f"{p.gpus_per_node}: a GPU job has one task per GPU, and this would put {what} (leave "
                           f"tasks_per_node out, or train on the CPU: --device cpu)")

    def cpus(self, jobs: int | None = None) -> tuple[int, str]:
        p = self.profile
        said = f"cpus_per_task: {p.cpus_per_task}" if p.cpus_per_task else \
            f"cpus_per_task: null, {p.cpus()} per task {'with' if p.gpus_per_node else 'without'} GPUs"
        return p.cpus(), f"{self.source_of('cpus_per_task')}: {said}"

    def no_gpu_reason(self, device: str) -> str | None:
        if self.profile.gpus_per_node:
            return None
        return f"{self.source_of('gpus_per_node')}: gpus_per_node: 0, so the jobs get no GPU"

    def submit(self, jobs: list[Job]) -> list[dict]:
        import submitit

        p = self.profile
        executor = submitit.SlurmExecutor(folder=self.experiment_dir / "slurm" / "%j", max_num_timeout=p.max_requeues)
        extra = dict(p.additional_parameters)
        executor.update_parameters(
            job_name=f"roadmap-{self.experiment_dir.name}", nodes=p.nodes, ntasks_per_node=p.tasks(),
            cpus_per_task=p.cpus(), time=p.timeout_min, array_parallelism=p.array_parallelism,
            signal_delay_s=p.signal_delay_s,
            # torch would take a thread per core of the node, not of the job: oversubscribed, the jobs sharing a
            # node spin against each other (an epoch 40× slower on the local cluster's two nodes of two CPUs)
            setup=[f"export OMP_NUM_THREADS={p.cpus()}"],
            **({"gpus_per_node": p.gpus_per_node} if p.gpus_per_node else {}),
            **({"mem": f"{p.mem_gb}GB"} if p.mem_gb else {}),
            **{k: getattr(p, k) for k in ("partition", "account", "qos", "constraint") if getattr(p, k)},
            **({"additional_parameters": extra} if extra else {}))
        size = max_array_size()
        records = []
        for start in range(0, len(jobs), size):  # submitit submits one array per batch: keep each within the cap
            chunk = jobs[start:start + size]
            try:  # submitit echoes sbatch's complaint to stderr; it is in the one line below
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                    handles = [executor.submit(SubmittedRun(job)) for job in chunk]
            except submitit.core.utils.FailedJobError as e:  # sbatch said no: an account, a feature, a gres
                said = [ln.strip() for ln in str(e).splitlines() if "error" in ln] or [str(e).strip()]
                raise RoadmapError(f"sbatch refused the jobs ({len(records)} of {len(jobs)} submitted before): "
                                   f"{said[-1]}") from None
            records += [record(job, handle, self.name) for job, handle in zip(chunk, handles)]
            results.record_jobs(self.experiment_dir, records)
        return records

    @staticmethod
    def states(records: list[dict]) -> dict[str, JobState]:
        """SLURM's view of the jobs, by job id, asked by array id (elements that never started are listed only
        as ranges of their array: 12_[0-2]): sacct for what accounting knows, then squeue for what slurmctld still
        holds (every state, with pending reasons; fresher than accounting, which lags). A job neither knows is
        UNKNOWN, never pending."""
        ids = [r["job_id"] for r in records]
        out: dict[str, JobState] = {}
        if not ids or shutil.which("sacct") is None:
            return out  # no scheduler here (results copied elsewhere): nothing is known of the jobs
        arrays = sorted({i.split("_")[0] for i in ids})
        # a scheduler that does not answer is not a scheduler that forgot the jobs: SchedulerSilent, not UNKNOWN
        for line in _query(["sacct", "-n", "-P", "-X", "-o", "JobID,State,Elapsed", "-j", ",".join(arrays)],
                           must_answer=True):
            job_id, state, elapsed = (line.split("|") + ["", ""])[:3]
            for one in expand(job_id):
                out[one] = JobState(state.split()[0] if state else "UNKNOWN", "", elapsed)
        for line in _query(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%M|%r", "-j", ",".join(arrays)],
                           must_answer=True):
            job_id, state, elapsed, reason = (line.split("|") + ["", "", ""])[:4]
            for one in expand(job_id):  # squeue is current: its state and reason win over accounting's
                out[one] = JobState(state, reason if state == "PENDING" and reason != "None" else "", elapsed)
        return {i: out.get(i, JobState("UNKNOWN")) for i in ids}

    @staticmethod
    def cancel(records: list[dict]) -> list[str]:
        ids = sorted({r["job_id"] for r in records})
        if ids and shutil.which("scancel") is None:
            raise RoadmapError("cancel: no scancel on PATH (is this the cluster's login node?)")
        if ids:  # a job that ended meanwhile makes scancel complain; the others are cancelled all the same
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
        return ids

    def wait(self, records: list[dict], timeout_min: float | None = None, poll_s: float = 5.0) -> None:
        """Block until every job has ended, printing the counts of job states (and why jobs wait) as they change.
        A pending reason that can never clear, or `timeout_min`, ends the wait with a RoadmapError."""
        last, deadline = None, time.time() + timeout_min * 60 if timeout_min else None
        names = {r["job_id"]: f"{r['name']} seed{r['seed']}" for r in records}
        while True:
            try:
                now, answered = self.states(records), True
            except SchedulerSilent as e:  # slurmctld restarting, accounting busy: ask again, within the bound
                now, answered, line = {}, False, f"{e.args[0]}; asking again"
            else:
                line = summarize(now.values())
            if line != last:
                print(f"  [{time.strftime('%H:%M:%S')}] {line}", flush=True)
                last = line
            stuck = [(i, s.reason) for i, s in now.items() if s.state == "PENDING" and s.reason in NEVER]
            if stuck:
                job_id, reason = stuck[0]
                raise RoadmapError(f"job {job_id} ({names[job_id]}) will not start by itself: {reason}, "
                                   f"{NEVER[reason]}; cancel it (roadmap cancel {self.experiment_dir.name}) and fix "
                                   f"the profile, or release it")
            if answered and all(s.state in TERMINAL for s in now.values()):
                return
            if deadline is not None and time.time() > deadline:
                raise RoadmapError(f"--timeout-wait {timeout_min:g}: stopped waiting with {line}; the jobs go on "
                                   f"(roadmap status {self.experiment_dir.name})")
            time.sleep(poll_s)


def summarize(states) -> str:
    """`2 running, 1 pending (Resources)`: how many jobs are in each state, and why pending ones wait."""
    counts: dict[str, int] = {}
    for s in states:
        key = f"{s.state.lower()} ({s.reason})" if s.state == "PENDING" and s.reason else s.state.lower()
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def expand(job_id: str) -> list[str]:
    """`12_[0-2,5%4]` → 12_0, 12_1, 12_2, 12_5; any other id as it is."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m[2].split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m[1]}_{k}" for k in range(int(lo), int(hi or lo) + 1)]
    return out


def partition_limits(partition: str | None) -> dict | None:
    """What the partition's largest node can give one job (CPUs, memory, GPUs), how many nodes it has, and its
    MaxTime in minutes (None: no limit); None for a partition sinfo does not know."""
    fmt = ["-h", "-o", "%P|%c|%m|%G|%l|%D"]
    try:  # sinfo says nothing, exit 0, of a partition it does not know; it fails when it cannot ask slurmctld
        lines = _query(["sinfo", *fmt, *(["-p", partition] if partition else [])], must_answer=True)
    except SchedulerSilent as e:
        raise RoadmapError(f"--executor slurm: {e.args[0]} (is slurmctld up? `sinfo` should list the partitions)")
    rows = [ln.split("|") for ln in lines if ln.count("|") == 5]
    if not partition:
        default = [r for r in rows if r[0].endswith("*")]
        rows = default or rows
    if not rows:
        return None
    gpus = [int(g) for r in rows for g in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", r[3])]
    return {"name": rows[0][0].rstrip("*"), "cpus": max(int(r[1].rstrip("+")) for r in rows),
            "mem_mb": max(int(r[2].rstrip("+")) for r in rows), "gpus": max(gpus, default=0),
            "nodes": sum(int(r[5]) for r in rows), "max_min": _minutes(rows[0][4])}


def _minutes(limit: str) -> int | None:
    """SLURM's time format (infinite, MM, MM:SS, HH:MM:SS, D-HH:MM:SS) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(v) for v in clock.split(":")]
    h, m = (parts[0], parts[1]) if len(parts) == 3 else (0, parts[0])
    return int(days or 0) * 1440 + h * 60 + m


def max_array_size() -> int:
    """How many elements one array may have (scontrol's MaxArraySize; indices run to MaxArraySize − 1)."""
    for line in _query(["scontrol", "show", "config"]):
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return max(1, int(value))
    return 1001


def _query(command: list[str], must_answer: bool = False) -> list[str]:
    """A SLURM command's output lines; none when it is missing or does not answer in a minute, unless
    `must_answer`: then that is a SchedulerSilent error (a job SLURM no longer knows is not one)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        if must_answer:
            raise SchedulerSilent(f"{command[0]} did not answer ({type(e).__name__})") from None
        return []
    if must_answer and done.returncode != 0 and "Invalid job id" not in done.stderr:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise SchedulerSilent(f"{command[0]} failed: {said}")
    return done.stdout.splitlines()
