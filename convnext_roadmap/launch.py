"""The run command's flow: plan the request's jobs, hand what is left of them to an executor, wait, report."""

from __future__ import annotations

from pathlib import Path

from . import plan, report, results
from .errors import RoadmapError
from .executors import Executor, SchedulerSilent, records, registry
from .roadmap import Variant


def run(variants: list[Variant], seeds: list[int], experiment_dir: Path, executor: Executor, *, base: str,
        recipe: str, device: str = "auto", force: bool = False, dry_run: bool = False, wait: bool = False,
        timeout_wait: float | None = None, tensorboard: bool = False, log_every: int = 50) -> int:
    """Train the variants × seeds that are not done yet; return the exit code of this request: 1 when one of its
    runs failed, else 0 (every run finished, submitted without waiting, or left to another live launch that
    holds it)."""
    from .data import load_splits

    plan.check_configs(variants)  # the Python API's callers, too; the CLI has checked before with_hub_weights
    train_split, _ = load_splits(variants[0].cfg.data.source)  # a bad --data fails here, before anything is written
    classes = len(train_split.classes)
    plan.check_initial_weights(variants, classes)
    plan.check_training(variants, executor.processes)
    executor.check(device)
    plan.check_gpu(variants, device, executor.without_gpu(device))
    plan.check_workers(variants, *executor.cpus(len(variants) * len(seeds)))
    if tensorboard:
        _check_tensorboard()
    measures = plan.measure(variants, classes)
    jobs = plan.make_jobs(variants, seeds, experiment_dir, device,
                          {"base": base, "experiment": experiment_dir.name, "recipe": recipe}, measures,
                          tensorboard=tensorboard, log_every=log_every)
    recorded = results.read_jobs(experiment_dir)
    try:
        now = records.states(recorded)
    except SchedulerSilent as e:
        if not dry_run:
            raise
        print(f"! {e.args[0]}: the dry run does not know which jobs are queued", flush=True)
        now = {}
    live = records.live(recorded, jobs, now)  # queued or running: left alone, and what they train binds the request
    plan.check_conflicts(jobs, force, {(r["name"], r["seed"]): (r["cfg"], live[(r["name"], r["seed"])])
                                       for r in records.unfinished(recorded, now) if "cfg" in r})
    rows = plan.entries(variants, measures)
    if dry_run:
        print(f"# {experiment_dir}: {len(variants)} run(s) × {len(seeds)} seed(s), nothing is written (dry run)")
        print(plan.describe(variants, jobs, rows))
        print(executor.describe(), end="" if executor.describe().endswith("\n") else "\n")
        return 0
    plan.save(experiment_dir, base, recipe, seeds, rows)
    keys = {(j.name, j.seed) for j in jobs}
    recorded = [r for r in recorded if (r["name"], r["seed"]) in keys]
    finished = {(j.name, j.seed) for j in jobs if results.is_done(Path(j.run_dir))}
    todo, skipped = plan.pending(jobs, finished, live, force)
    print(f"# {experiment_dir}: {len(variants)} run(s) × {len(seeds)} seed(s); "
          f"{executor.describe(len(todo)).rstrip()}", flush=True)
    for line in skipped:
        print(line, flush=True)
    if force:
        plan.remove_runs(todo)
    submitted = executor.submit(todo) if todo else []
    if not executor.blocking:
        for r in submitted:
            print(f"→ {r['name']} seed{r['seed']}: job {r['job_id']}, log {r['stdout']}", flush=True)
        if not wait:
            print(f"submitted {len(todo)} job(s); watch with `roadmap status {experiment_dir.name}`")
            return 0
        executor.wait([r for r in recorded if (r["name"], r["seed"]) in live] + submitted, timeout_min=timeout_wait)
    for line in records.mark_ended_failed(experiment_dir):
        print(line, flush=True)
    report.write(experiment_dir)
    failed = [j for j in jobs if (results.read_json(Path(j.run_dir) / "summary.json") or {}).get("status") == "failed"]
    return 1 if failed else 0


def check_wait(executor: type[Executor], wait: bool, timeout_wait: float | None) -> None:
    """--wait (and --timeout-wait) are the launch's: only an executor whose `submit` returns before its jobs end
    has anything to wait for."""
    if executor.blocking and (wait or timeout_wait is not None):
        flag = "--wait" if wait else "--timeout-wait"
        waiting = [name for name, cls in registry().items() if not cls.blocking]
        raise RoadmapError(f"{flag} is for --executor {' or '.join(waiting)}, not {executor.name}")


def _check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise RoadmapError("--log tensorboard: the tensorboard package is not installed "
                           "(pip install 'convnext-roadmap[tensorboard]')") from None
