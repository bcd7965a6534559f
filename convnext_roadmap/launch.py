"""The run command's flow: check the request, plan its jobs, look at what is on disk and queued, hand what is left to
an executor, wait, report."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from . import plan, preflight, report, results
from .executors import Executor, records
from .job import TENSORBOARD_EVERY_STEPS
from .roadmap import Variant


def run(variants: list[Variant], seeds: list[int], experiment_dir: Path, executor: Executor, *, base: str,
        recipe: str, device: str = "auto", force: bool = False, dry_run: bool = False, wait: bool = False,
        timeout_wait: float | None = None, log: Sequence[str] = (), log_every_steps: int | None = None,
        wandb: dict | None = None) -> int:
    """Train the variants × seeds that are not done yet; return the exit code of this request: 1 when one of its
    runs failed, else 0 (every run finished, submitted without waiting, or left to another live launch that
    holds it)."""
    classes = preflight.check(variants, executor, device=device, seeds=len(seeds), wait=wait,
                              timeout_wait=timeout_wait, log=log, log_every_steps=log_every_steps,
                              wandb=wandb)
    measures = plan.complexities(variants, classes)
    jobs = plan.make_jobs(variants, seeds, experiment_dir, device,
                          {"base": base, "experiment": experiment_dir.name, "recipe": recipe}, measures,
                          log=tuple(dict.fromkeys(log)), log_every_steps=log_every_steps or TENSORBOARD_EVERY_STEPS,
                          wandb=wandb or {})
    now = records.standing(experiment_dir, jobs, scheduler_may_be_silent=dry_run)
    for note in now.notes:
        print(f"! {note}", flush=True)
    plan.check_conflicts(jobs, force, now.queued)
    rows = plan.entries(variants, measures)
    if dry_run:
        print(f"# {experiment_dir}: {len(variants)} run(s) × {len(seeds)} seed(s), nothing is written (dry run)")
        print(plan.describe(variants, jobs, rows))
        print(executor.describe(), end="" if executor.describe().endswith("\n") else "\n")
        return 0
    plan.save(experiment_dir, base, recipe, seeds, rows)
    todo, skipped = plan.pending(jobs, now.finished, now.live, force)
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
        executor.wait([r for r in now.recorded if (r["name"], r["seed"]) in now.live] + submitted,
                      timeout_min=timeout_wait)
    settle_and_report(experiment_dir)
    return 1 if any(results.run_status(Path(j.run_dir)) == "failed" for j in jobs) else 0


def settle_and_report(experiment_dir: Path, say: Callable[[str], None] = lambda line: print(line, flush=True),
                      quiet: bool = False):
    """Give the jobs that ended without a summary a failed one with their root cause (each said), then write the
    experiment's report (report.write, whose value this returns)."""
    for line in records.mark_ended_failed(experiment_dir):
        say(line)
    return report.write(experiment_dir, quiet=quiet)
