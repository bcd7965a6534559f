"""Where runs execute. Turns variants × seeds into jobs for `train.run_job` and runs them; a job never knows how
it was launched."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import results
from .config import Config, diff
from .errors import RoadmapError
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


def run_in_process(jobs: list[Job], force: bool = False) -> list[tuple[Job, str]]:
    """Run the jobs one after another in this process. A failing job is reported and the others go on."""
    from .train import run_job

    outcomes = []
    for job in jobs:
        if results.is_done(Path(job.run_dir)) and not force:
            print(f"= {job.name} seed{job.seed}: done already ({job.run_dir})", flush=True)
            outcomes.append((job, "skipped"))
            continue
        if force:
            shutil.rmtree(job.run_dir, ignore_errors=True)
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
            what = f"timm model {v.cfg.timm.name}" + (f", adapted to {v.cfg.timm.img_size}²" if v.cfg.timm.img_size else "")
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

