"""Where runs execute. Turns variants × seeds into jobs for `train.run_job` and runs them; a job never knows how
it was launched."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import results
from .config import Config, diff
from .errors import RoadmapError
from .model.network import adapts_input_size
from .roadmap import Variant
from .train import Job


def make_jobs(variants: list[Variant], seeds: list[int], experiment_dir: Path, device: str,
              meta: dict) -> list[Job]:
    return [Job(run_dir=str(results.run_dir(experiment_dir, v.name, seed)), name=v.name,
                cfg=v.cfg.model_dump(), seed=seed, device=device,
                meta={**meta, "label": v.label, "group": v.group})
            for v in variants for seed in seeds]


def check_conflicts(jobs: list[Job]) -> None:
    """A run folder holds one config: refuse to mix a finished run with a different request."""
    import yaml

    for job in jobs:
        path = Path(job.run_dir) / "config.yaml"
        if not path.exists():
            continue
        before = Config.model_validate(yaml.safe_load(path.read_text()))
        changes = diff(before, Config.model_validate(job.cfg))
        if changes:
            key, (old, new) = next(iter(changes.items()))
            raise RoadmapError(f"{path}: this run was made with another config ({key}: {old} → {new}); "
                               f"use another --experiment, or --force to train it again")


def preflight(variants: list[Variant], num_classes: int) -> None:
    """Load pretrained files into each network before anything is written, so that a file that does not fit is
    one error line, not a failed run."""
    from .model import build_model
    from .roadmap import timm_twin
    from .train import load_pretrained

    for v in variants:
        source = v.cfg.train.pretrained
        if source is True and v.cfg.timm is None and timm_twin(v.cfg) is None:
            raise RoadmapError(f"--pretrained: {v.name} is not a timm model, so there are no hub weights for it; "
                               f"give a checkpoint file")
        if isinstance(source, str):
            load_pretrained(build_model(v.cfg, num_classes), v.cfg)


def plan_entries(variants: list[Variant]) -> list[dict]:
    from .measure import complexity

    entries = []
    for v in variants:
        c = complexity(v.cfg)
        entries.append({"name": v.name, "label": v.label, "group": v.group, "gflops": c["gflops"],
                        "params": c["params"], "sources": list(v.sources)})
    return entries


def save_plan(experiment_dir: Path, base: str, recipe: str, seeds: list[int], entries: list[dict]) -> None:
    """Record what the experiment asks for; a later request adds its runs and seeds to those already there."""
    old = results.read_json(Path(experiment_dir) / "plan.json") or {"runs": [], "seeds": []}
    names = {r["name"] for r in entries}
    runs = [r for r in old["runs"] if r["name"] not in names]
    plan = {"base": base, "recipe": recipe, "seeds": sorted(set(old["seeds"]) | set(seeds)), "runs": runs + entries}
    results.save_plan(experiment_dir, plan)


def run_in_process(jobs: list[Job], experiment_dir: Path, force: bool = False) -> list[tuple[Job, str]]:
    """Run the jobs that are not done yet one after another in this process. A failing job is reported and the
    others go on."""
    from .train import run_job

    outcomes = []
    for job in pending(jobs, experiment_dir, force):
        start = time.time()
        try:
            summary = run_job(job)
        except RoadmapError as e:
            print(f"✗ {job.name} seed{job.seed}: {e}", flush=True)
            outcomes.append((job, "failed"))
            continue
        except Exception as e:  # noqa: BLE001 - one failed step must not stop the roadmap; it is in its summary
            print(f"✗ {job.name} seed{job.seed}: failed: {type(e).__name__}: {e}".splitlines()[0], flush=True)
            outcomes.append((job, "failed"))
            continue
        print(f"✓ {job.name} seed{job.seed}: top-1 {summary['final_top1']:.1f}% (best {summary['best_top1']:.1f}), "
              f"{summary['gflops_224']:.2f} GFLOPs at 224², {summary['params'] / 1e6:.1f} M params, "
              f"{time.time() - start:.0f} s", flush=True)
        outcomes.append((job, "completed"))
    return outcomes


def describe_plan(variants: list[Variant], jobs: list[Job], entries: list[dict]) -> str:
    """The dry-run text: each run, what it changes from the one before, its FLOPs, and whether it is done."""
    lines, previous = [], None
    by_name = {e["name"]: e for e in entries}
    for v in variants:
        changes = diff(previous, v.cfg) if previous is not None else {}
        model_changes = {k: c for k, c in changes.items() if not k.startswith(("train.", "data."))}
        what = "; ".join(f"{k}: {a} → {b}" for k, (a, b) in model_changes.items()) or "(the start)"
        if v.cfg.timm is not None:
            adapted = f", adapted to {v.cfg.timm.img_size}²" if adapts_input_size(v.cfg) else ""
            what = f"timm model {v.cfg.timm.name}{adapted}"
        states = []
        for job in (j for j in jobs if j.name == v.name):
            path = Path(job.run_dir)
            state = "done" if results.is_done(path) else \
                "resume" if (path / "checkpoint.pt").exists() else "run"
            states.append(f"seed{job.seed}: {state}")
        e = by_name[v.name]
        lines.append(f"{v.name:<28} {e['gflops']:5.2f} GFLOPs {e['params'] / 1e6:6.1f} M  [{', '.join(states)}]\n"
                     f"    {what}")
        previous = v.cfg
    if variants:
        cfg = variants[0].cfg
        t, d = cfg.train, cfg.data
        scale = f", width × {cfg.stages.width_mult}, depth × {cfg.stages.depth_mult}" if cfg.stages else ""
        lines.append(f"recipe: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g} at batch {t.base_batch_size}, "
                     f"data {d.source} at {d.img_size}²{scale}, pretrained: {t.pretrained}")
    return "\n".join(lines)



# ------------------------------------------------------------------------------------------------ submitit

SLURM_DIR = Path(__file__).resolve().parent.parent / "slurm"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


def load_profile(name: str, overrides: dict) -> "ClusterProfile":  # noqa: F821
    """A cluster profile (slurm/NAME.yaml or a file), with command-line flags on top."""
    from .config import ClusterProfile, Merged, load_yaml, validate
    from .roadmap import shown

    path = Path(name) if Path(name).suffix else SLURM_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SLURM_DIR.glob("*.yaml")))
        raise RoadmapError(f"--cluster {name}: no such profile (profiles in slurm/: {known})")
    merged = Merged().merge(load_yaml(path), shown(path))
    flags = {k: v for k, v in overrides.items() if v is not None}
    for key, value in flags.items():
        merged.merge({key: value}, f"--{key.replace('_', '-')}")
    return validate(merged, ClusterProfile)


class SubmittedRun:
    """What a SLURM (or submitit local) job calls: set up torch.distributed from submitit's environment when the
    job has several tasks, then `run_job`. On a time-out or preemption submitit calls `checkpoint`, which requeues
    the same call: `run_job` resumes from the run's last checkpoint."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self) -> dict:
        import submitit
        import torch

        from .train import run_job

        env = submitit.JobEnvironment()
        distributed = env.num_tasks > 1
        if distributed:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        try:
            return run_job(self.job)
        finally:
            if distributed:
                torch.distributed.destroy_process_group()

    def checkpoint(self, *args, **kwargs):
        import submitit

        requeues = Path(self.job.run_dir) / "requeues"
        count = int(requeues.read_text()) + 1 if requeues.exists() else 1
        results.write_text(requeues, f"{count}\n")
        return submitit.helpers.DelayedSubmission(SubmittedRun(self.job))


def submit(jobs: list[Job], profile, kind: str, experiment_dir: Path, wait_local: bool = True) -> list[dict]:
    """Submit the jobs as one job array (slurm), or one after another through submitit's LocalExecutor (local).
    Their ids and log paths are recorded in the experiment's jobs.json."""
    import submitit

    folder = Path(experiment_dir) / "slurm" / "%j"
    if kind == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues)
        extra = dict(profile.additional_parameters)
        executor.update_parameters(
            job_name=f"roadmap-{Path(experiment_dir).name}", nodes=profile.nodes,
            ntasks_per_node=profile.tasks(), cpus_per_task=profile.cpus_per_task, time=profile.timeout_min,
            array_parallelism=profile.array_parallelism,
            **({"gpus_per_node": profile.gpus_per_node} if profile.gpus_per_node else {}),
            **({"mem": f"{profile.mem_gb}GB"} if profile.mem_gb else {}),
            **{k: getattr(profile, k) for k in ("partition", "account", "qos", "constraint") if getattr(profile, k)},
            **({"additional_parameters": extra} if extra else {}))
        with executor.batch():
            handles = [executor.submit(SubmittedRun(job)) for job in jobs]
    else:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=profile.max_requeues)
        executor.update_parameters(timeout_min=profile.timeout_min, tasks_per_node=profile.tasks(),
                                   gpus_per_node=profile.gpus_per_node)
        handles = []
        for job in jobs:  # a queue on this machine: one run at a time
            handles.append(executor.submit(SubmittedRun(job)))
            _record(experiment_dir, [job], [handles[-1]], kind)
            if wait_local:
                try:
                    handles[-1].result()
                except Exception as e:  # noqa: BLE001 - reported in the run's summary and the table
                    print(f"✗ {job.name} seed{job.seed}: {str(e).strip().splitlines()[-1]}", flush=True)
    return _record(experiment_dir, jobs, handles, kind)


def _record(experiment_dir: Path, jobs: list[Job], handles, kind: str) -> list[dict]:
    path = Path(experiment_dir) / "jobs.json"
    known = {(r["name"], r["seed"]): r for r in recorded_jobs(experiment_dir)}
    for job, handle in zip(jobs, handles):
        known[(job.name, job.seed)] = {"name": job.name, "seed": job.seed, "job_id": str(handle.job_id),
                                       "executor": kind, "run_dir": job.run_dir,
                                       "stdout": str(handle.paths.stdout), "stderr": str(handle.paths.stderr)}
    records = list(known.values())
    results.write_json(path, {"jobs": records})
    return records


def recorded_jobs(experiment_dir: Path) -> list[dict]:
    """The submitted jobs of an experiment, as kept in its jobs.json."""
    return (results.read_json(Path(experiment_dir) / "jobs.json") or {}).get("jobs", [])


def job_states(records: list[dict]) -> dict[str, dict]:
    """SLURM's view of the recorded jobs, by job id: state and elapsed time, read with sacct (squeue for jobs
    sacct does not know yet)."""
    import subprocess

    ids = [r["job_id"] for r in records if r.get("executor") == "slurm"]
    states: dict[str, dict] = {}
    if not ids:
        return states
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,Elapsed", "-j", ",".join(ids)],
                         capture_output=True, text=True, timeout=60)
    for line in out.stdout.splitlines():
        job_id, state, elapsed = (line.split("|") + ["", ""])[:3]
        states[job_id] = {"state": state.split()[0] if state else "UNKNOWN", "elapsed": elapsed}
    missing = [i for i in ids if i not in states]
    if missing:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%M", "-j", ",".join(missing)], capture_output=True,
                             text=True, timeout=60)
        for line in out.stdout.splitlines():
            job_id, state, elapsed = (line.split("|") + ["", ""])[:3]
            states[job_id] = {"state": state, "elapsed": elapsed}
    return states


def status(experiment_dir: Path) -> list[dict]:
    """One line of facts per submitted (run, seed): job id, state, requeues, elapsed, epoch, last top-1, logs."""
    records = recorded_jobs(experiment_dir)
    if not records:
        raise RoadmapError(f"{experiment_dir}: no submitted jobs (jobs.json); runs in this process have none")
    states = job_states(records)
    rows = []
    for r in records:
        run = Path(r["run_dir"])
        metrics = results.read_metrics(run)
        summary = results.read_json(run / "summary.json") or {}
        requeues = int((run / "requeues").read_text()) if (run / "requeues").exists() else 0
        state = states.get(r["job_id"], {}).get("state") or summary.get("status", "unknown").upper()
        rows.append({"run": r["name"], "seed": r["seed"], "job_id": r["job_id"], "state": state,
                     "requeued": requeues, "elapsed": states.get(r["job_id"], {}).get("elapsed", ""),
                     "epoch": metrics[-1]["epoch"] if metrics else 0,
                     "top1": round(metrics[-1]["top1"], 1) if metrics else None,
                     "stdout": r["stdout"], "stderr": r["stderr"]})
    return rows


def cancel(experiment_dir: Path) -> list[str]:
    """Cancel the experiment's jobs that have not ended."""
    import subprocess

    records = recorded_jobs(experiment_dir)
    states = job_states(records)
    live = sorted({r["job_id"] for r in records if r.get("executor") == "slurm"
                   and states.get(r["job_id"], {}).get("state") not in TERMINAL})
    if live:
        subprocess.run(["scancel", *live], check=True, timeout=60)
    return live


def pending(jobs: list[Job], experiment_dir: Path, force: bool) -> list[Job]:
    """The jobs to submit: not finished (unless forced) and not already queued or running."""
    records = {(r["name"], r["seed"]): r for r in recorded_jobs(experiment_dir)}
    states = job_states(list(records.values()))
    todo = []
    for job in jobs:
        record = records.get((job.name, job.seed))
        live = record and states.get(record["job_id"], {}).get("state", "COMPLETED") not in TERMINAL
        if live:
            print(f"= {job.name} seed{job.seed}: queued already (job {record['job_id']})", flush=True)
        elif results.is_done(Path(job.run_dir)) and not force:
            print(f"= {job.name} seed{job.seed}: done already ({job.run_dir})", flush=True)
        else:
            if force:
                shutil.rmtree(job.run_dir, ignore_errors=True)
            todo.append(job)
    return todo


def wait(experiment_dir: Path, poll_s: float = 5.0) -> None:
    """Block until every recorded job has ended, printing the counts of job states as they change."""
    records = recorded_jobs(experiment_dir)
    last = None
    while True:
        states = job_states(records)
        counts: dict[str, int] = {}
        for r in records:
            state = states.get(r["job_id"], {}).get("state", "PENDING")
            counts[state] = counts.get(state, 0) + 1
        line = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        if line != last:
            print(f"  [{time.strftime('%H:%M:%S')}] {line}", flush=True)
            last = line
        if all(states.get(r["job_id"], {}).get("state") in TERMINAL for r in records):
            return
        time.sleep(poll_s)


def job_failures(experiment_dir: Path) -> dict[tuple[str, int], str]:
    """(run, seed) → the last error line of its job's stderr, for jobs that ended without a summary (killed,
    out of memory, timed out for good); the table shows them as failed."""
    records = recorded_jobs(experiment_dir)
    if not records:
        return {}
    states = job_states(records)
    failures = {}
    for r in records:
        state = states.get(r["job_id"], {}).get("state")
        if state in TERMINAL and state != "COMPLETED" and not (Path(r["run_dir"]) / "summary.json").exists():
            failures[(r["name"], r["seed"])] = f"{state}: {last_error_line(r['stderr']) or 'no error output'}"
    return failures


def last_error_line(stderr: str) -> str | None:
    path = Path(stderr)
    if not path.exists():
        return None
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [None])[-1]
