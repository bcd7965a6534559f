"""The result store: the experiment folder's layout, atomic writes, one owner per run (run.lock), reading runs back,
and the table's files.

    <results>/<experiment>/plan.json                      what the experiment asked for (rows of the table)
    <results>/<experiment>/jobs.json                      submitted jobs: ids, executor, log paths
    <results>/<experiment>/<run>/seed<k>/config.yaml      the resolved config
                                         metrics.jsonl    one line per finished epoch
                                         summary.json     status, final and best top-1, FLOPs, params, speed, ...
                                         checkpoint.pt    the latest state, for resuming
                                         best.pt          the weights of the best epoch
                                         requeues         how often its job was requeued (SLURM)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

from . import processes
from .errors import RoadmapError
from .resources import atomic_write


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict | None:
    """A JSON object this tool wrote, or None where the file cannot be read (there is none). Every write is atomic,
    so a file that is not a JSON object was changed by hand or damaged: one line naming it, not a traceback later."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RoadmapError(f"{path}: not JSON ({e}); the file was changed by hand or damaged (restore or "
                           f"delete it)") from None
    if not isinstance(data, dict):
        raise RoadmapError(f"{path}: not a JSON object; the file was changed by hand or damaged (restore or "
                           f"delete it)")
    return data


def load_checkpoint(path: Path) -> dict:
    """A checkpoint of this project (checkpoint.pt, best.pt), read on the CPU without running code: torch's
    weights-only unpickler, which builds tensors and plain data, and numpy's arrays (its random state is one,
    pickled under numpy 2's name or, by an older numpy, 1's); a file that needs anything else (a results folder
    from elsewhere can hold any pickle) is refused, unloaded."""
    import pickle

    import numpy as np
    import torch

    rebuild = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own array-building function, under either version
    arrays = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), rebuild,  # the random state's keys are uint32
              (rebuild, "numpy.core.multiarray._reconstruct"), (rebuild, "numpy._core.multiarray._reconstruct")]
    try:
        with torch.serialization.safe_globals(arrays):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)|got <class '([^']+)'>", str(e))
        said = next(g for g in found.groups() if g) if found else "more than weights"
        raise RoadmapError(f"{path}: refused: it holds {said}, which "
                           f"loading would run; a checkpoint of this project holds only tensors and plain data") \
            from None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as e:  # written whole each epoch (write_text), so only an edit can leave this
            raise RoadmapError(f"{path}: line {number}: not JSON ({e}); the file was changed by hand or "
                               f"damaged") from None
    return out


def run_dir(experiment_dir: Path, name: str, seed: int) -> Path:
    return Path(experiment_dir) / name / f"seed{seed}"


def run_status(path: Path) -> str | None:
    """How a run ended, by its summary (completed, failed, interrupted), or None where it has none yet."""
    return (read_json(Path(path) / "summary.json") or {}).get("status")


def is_done(path: Path) -> bool:
    return run_status(path) == "completed"


LEVEL_EPOCHS, LEVEL_MARGIN = 3, 1.5  # a run levelled off: its last 3 epochs' mean top-1 within 1.5 of its best


def below_best(top1: list[float]) -> float | None:
    """How far the mean top-1 of a run's last LEVEL_EPOCHS epochs falls below its best epoch (None: too few epochs
    to tell); more than LEVEL_MARGIN, and the run had not levelled off."""
    return max(top1) - sum(top1[-LEVEL_EPOCHS:]) / LEVEL_EPOCHS if len(top1) >= LEVEL_EPOCHS else None


def epoch_times(m: dict) -> str:
    """Where an epoch's time went (a metrics line): training steps, waiting for data, evaluation; "" for a line
    without them."""
    if not {"train_s", "data_s", "epoch_s"} <= set(m):
        return ""
    return (f"{m['epoch_s']:.1f} s = steps {m['train_s'] - m['data_s']:.1f} + data {m['data_s']:.1f} "
            f"+ eval {m['epoch_s'] - m['train_s']:.1f}")


def resumed_note(m: dict) -> str:
    """"  resumed at batch B/N" for a metrics line of an epoch a run went on with from its middle, else ""."""
    if "resumed_at_batch" not in m:
        return ""
    return f"  resumed at batch {m['resumed_at_batch']}/{m['batches']}"


def write_failure(path: Path, name: str, seed: int, error: str, meta: dict | None = None) -> None:
    """A failed run's summary: its error's root cause, one line, for the table."""
    write_json(Path(path) / "summary.json", {"status": "failed", "name": name, "seed": seed, "error": error,
                                             **(meta or {})})


def read_requeues(path: Path) -> int:
    try:
        return int((Path(path) / "requeues").read_text())
    except (OSError, ValueError):
        return 0


def count_requeue(path: Path) -> None:
    write_text(Path(path) / "requeues", f"{read_requeues(path) + 1}\n")


def read_jobs(experiment_dir: Path) -> list[dict]:
    """The submitted jobs of an experiment, as kept in its jobs.json."""
    path = Path(experiment_dir) / "jobs.json"
    jobs = (read_json(path) or {}).get("jobs", [])
    keys = {"name", "seed", "job_id", "run_dir"}
    if not isinstance(jobs, list) or not all(isinstance(r, dict) and keys <= set(r) for r in jobs):
        raise RoadmapError(f"{path}: not a list of job records (each with {', '.join(sorted(keys))}); the file was "
                           f"changed by hand or damaged")
    return jobs


@contextlib.contextmanager
def _experiment_lock(experiment_dir: Path):
    """One writer of the experiment's shared files (jobs.json, plan.json) at a time: two launches of one
    experiment read, change and write them, and neither may lose the other's rows."""
    import fcntl

    Path(experiment_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(experiment_dir) / ".experiment.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def record_jobs(experiment_dir: Path, records: list[dict]) -> None:
    """Add or replace (by run and seed) job records in jobs.json."""
    with _experiment_lock(experiment_dir):
        known = {(r["name"], r["seed"]): r for r in read_jobs(experiment_dir)}
        known.update({(r["name"], r["seed"]): r for r in records})
        write_json(Path(experiment_dir) / "jobs.json", {"jobs": list(known.values())})


# ---------------------------------------------------------------------------------------------------- the plan

def update_plan(experiment_dir: Path, change: Callable[[dict | None], dict]) -> None:
    """plan.json becomes `change(what it holds now, or None)`, with no other launch writing between."""
    with _experiment_lock(experiment_dir):
        write_json(Path(experiment_dir) / "plan.json", change(read_json(Path(experiment_dir) / "plan.json")))


def compared_with(names: list[str], baselines: dict[str, str | None]) -> dict[str, str | None]:
    """For each run (in the order of plan.json, or of a request), the run it is shown against: its baseline, or the
    row before where the baseline is not among `names` (left out by --steps, or not finished); None for one without
    a baseline."""
    out = {}
    for before, name in zip([None, *names], names):
        base = baselines.get(name)
        out[name] = base if base in names else before if base is not None else None
    return out


def load_plan(experiment_dir: Path) -> dict:
    path = Path(experiment_dir) / "plan.json"
    if not path.exists():
        raise RoadmapError(f"{experiment_dir}: not an experiment folder (no plan.json; run `roadmap run` first)")
    plan = read_json(path)
    runs = plan.get("runs") if isinstance(plan, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and {"name", "label"} <= set(r) for r in runs):
        raise RoadmapError(f"{path}: not a plan (a list of runs, each with a name and a label); the file was "
                           f"changed by hand or damaged")
    return plan


def find_experiment(results: Path, name: str | None) -> Path:
    """An experiment folder by name, or the most recently planned one."""
    results = Path(results)
    if name:
        path = Path(name) if Path(name).is_dir() and (Path(name) / "plan.json").exists() else results / name
        if not (path / "plan.json").exists():
            known = sorted(p.parent.name for p in results.glob("*/plan.json"))
            raise RoadmapError(f"{path}: no such experiment (experiments in {results}: {', '.join(known) or 'none'})")
        return path
    plans = sorted(results.glob("*/plan.json"), key=lambda p: p.stat().st_mtime)
    if not plans:
        raise RoadmapError(f"{results}: no experiments yet (run `roadmap run` first)")
    return plans[-1].parent


# --------------------------------------------------------------------------------------------------- the table

def write_table(experiment_dir: Path, table, pretty) -> None:
    """table.csv (the numbers) and table.md (for people)."""
    write_text(Path(experiment_dir) / "table.csv", table.to_csv(index=False))
    write_text(Path(experiment_dir) / "table.md", pretty.to_markdown(index=False, disable_numparse=True) + "\n")


# ------------------------------------------------------------------------------------------- one owner per run

LOCK = "run.lock"
STALE_S = 180  # a holder refreshes its lock every 30 s; one not refreshed for this long has died


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job_id(),
            "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0), "since": time.time()}


def _slurm_job_id() -> str | None:
    """This process's SLURM job as squeue names it (an array element as ARRAY_INDEX), or None."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def lock_holder(path: Path) -> dict | None:
    """Who holds a run folder now, or None: a lock whose holder has died (its pid gone on this host, or no refresh
    for STALE_S seconds) is no lock."""
    lock = Path(path) / LOCK
    try:
        age, text = time.time() - lock.stat().st_mtime, lock.read_text()
    except OSError:
        return None
    if age > STALE_S:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {"host": "?", "pid": "?"}  # being written: held
    pid = str(holder.get("pid", ""))
    if holder.get("host") == socket.gethostname() and pid.isdigit() and not processes.alive(pid):
        return None
    return holder


def describe_holder(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"running in pid {holder['pid']} on host {holder['host']}{job}"


class RunLock:
    """One owner per run folder: `acquire` puts run.lock (host, pid, SLURM job and restart count, start time) in
    place whole (a hard link of a finished file), or takes over a dead holder's, or our own job's from before a
    requeue (SLURM_RESTART_COUNT has grown: another process of the same allocation is no requeue); a thread
    refreshes it while the run trains; `release` removes it if it is still ours."""

    def __init__(self, path: Path):
        self.path = Path(path) / LOCK
        self.me: dict | None = None
        self._stop = None

    def acquire(self) -> dict | None:
        """None when this process now owns the run; else the live holder."""
        import fcntl
        import threading
        import uuid

        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = _holder()
        mine = self.path.with_name(f".{LOCK}.{uuid.uuid4().hex}")
        mine.write_text(json.dumps(me))
        try:
            try:
                os.link(mine, self.path)  # only when there is no lock at all
            except FileExistsError:
                # one taker at a time on this host: under the guard, a lock found dead (or our own job's before
                # its requeue) is moved aside and ours linked in its place. Nobody else can put a lock there in
                # between: a plain link fails while any file is there, a taker waits for the guard.
                with open(self.path.with_name(f".{LOCK}.guard"), "a") as guard:
                    fcntl.flock(guard, fcntl.LOCK_EX)
                    holder = lock_holder(self.path.parent)
                    requeued = (holder is not None and me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"]
                                and me["restart"] > holder.get("restart", 0))
                    if holder is not None and not requeued:
                        return holder
                    aside = self.path.with_name(f".{LOCK}.stale.{uuid.uuid4().hex}")
                    try:
                        os.rename(self.path, aside)
                        aside.unlink()
                    except FileNotFoundError:
                        pass
                    try:
                        os.link(mine, self.path)
                    except FileExistsError:  # a plain link made it between our rename and ours: theirs
                        return lock_holder(self.path.parent) or {"host": "?", "pid": "?"}
            self.me = me
            self._stop = threading.Event()
            threading.Thread(target=self._refresh, daemon=True).start()
            return None
        finally:
            mine.unlink(missing_ok=True)

    def _refresh(self) -> None:
        while not self._stop.wait(30):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        try:
            if json.loads(self.path.read_text()) == self.me:
                self.path.unlink()
        except (OSError, ValueError):
            pass
