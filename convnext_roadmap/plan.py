"""From the requested networks to jobs: variants × seeds, their FLOPs counted once, conflicts with what is on disk or
queued, which jobs are still to run, the dry-run text and plan.json."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import results
from .config import TimmNet, diff, parse
from .errors import RoadmapError
from .loading import read_config
from .roadmap import Variant
from .job import Job


def complexities(variants: list[Variant], num_classes: int) -> dict[str, dict]:
    """Each network's FLOPs and parameters, once: at the paper's scale (224², 1000 classes) for the table, and as
    trained (the recipe's image size and scale, the data's classes) for the run's summary."""
    from .measure import complexity

    out = {}
    for v in variants:
        paper, trained = complexity(v.cfg), complexity(v.cfg, num_classes, v.cfg.data.img_size, paper=False)
        out[v.name] = {"gflops_224": paper["gflops"], "gflops_fvcore_224": paper["gflops_fvcore"],
                       "params": paper["params"], "trained_gflops": trained["gflops"],
                       "trained_params": trained["params"]}
    return out


def make_jobs(variants: list[Variant], seeds: list[int], experiment_dir: Path, device: str, meta: dict,
              measures: dict[str, dict], **options) -> list[Job]:
    """One job per (variant, seed); `options` are Job fields shared by all (log, log_every_steps, wandb)."""
    return [Job(run_dir=str(results.run_dir(experiment_dir, v.name, seed)), name=v.name, cfg=v.cfg.model_dump(),
                seed=seed, device=device, meta={**meta, "label": v.label, "group": v.group},
                measures=measures[v.name], **options)
            for v in variants for seed in seeds]


def check_conflicts(jobs: list[Job], force: bool = False,
                    queued: dict[tuple[str, int], tuple[dict, str]] | None = None) -> None:
    """A run's seeds share one config (its row averages them): refuse a request that would mix what is on disk, or
    what is queued to train (`queued`: (run, seed) → (the config its live job will train, where it is)), with
    another config. `--force` trains the requested seeds again, so only the run's other seeds must agree; a live
    job is never forced. A seed that holds nothing trained (it failed or was stopped before its first checkpoint,
    and nobody holds it) binds nothing: it is trained afresh with the config asked for."""
    requested = {Path(j.run_dir) for j in jobs}
    for job in jobs:
        new = parse(job.cfg)
        for (name, seed), (cfg, where) in sorted((queued or {}).items()):
            if name != job.name:
                continue
            try:  # through the schema, so that a field added since it was queued takes its default on both sides
                recorded = parse(cfg)
            except ValueError:  # queued by a version whose configs this one cannot read: it will fail on its own
                continue
            if changes := diff(recorded, new, trained_only=True):
                key, (old, value) = next(iter(changes.items()))
                raise RoadmapError(f"{job.name} seed{seed} is {where} with another config ({key}: {old} → {value}), "
                                   f"and a run's seeds share one; cancel that job first (`roadmap cancel "
                                   f"{Path(job.run_dir).parent.parent.name}` cancels all the experiment's live jobs), "
                                   f"or use another --experiment")
        for folder in sorted(Path(job.run_dir).parent.glob("seed*")):
            path = folder / "config.yaml"
            if not path.exists() or (force and folder in requested) or _nothing_trained(folder):
                continue
            changes = diff(read_config(path), new, trained_only=True)
            if not changes:
                continue
            key, (old, value) = next(iter(changes.items()))
            if folder in requested:
                raise RoadmapError(f"{path}: this run was made with another config ({key}: {old} → {value}); "
                                   f"use another --experiment, or --force to train it again")
            raise RoadmapError(f"{path}: {folder.name} of {job.name} was made with another config ({key}: {old} → "
                               f"{value}), and a run's seeds share one; ask for that seed too (--seeds), or use "
                               f"another --experiment")


def _nothing_trained(folder: Path) -> bool:
    return (not (folder / "checkpoint.pt").exists() and not results.is_done(folder)
            and results.lock_holder(folder) is None)


def pending(jobs: list[Job], finished: set[tuple[str, int]], live: dict[tuple[str, int], str],
            force: bool) -> tuple[list[Job], list[str]]:
    """The jobs still to run, and a line for each that is not: queued or running already (`live`: where), or
    finished (unless `force`)."""
    todo, skipped = [], []
    for job in jobs:
        key = (job.name, job.seed)
        if key in live:
            skipped.append(f"= {job.name} seed{job.seed}: {live[key]}")
        elif key in finished and not force:
            skipped.append(f"= {job.name} seed{job.seed}: done already ({job.run_dir})")
        else:
            todo.append(job)
    return todo, skipped


def remove_runs(jobs: list[Job]) -> None:
    """`--force`: delete these runs' folders, so that they train from the start; not one that another launch has
    begun to train since the plan was made (its job will find it held, and leave it)."""
    for job in jobs:
        if results.lock_holder(Path(job.run_dir)) is None:
            shutil.rmtree(job.run_dir, ignore_errors=True)


def entries(variants: list[Variant], measures: dict[str, dict]) -> list[dict]:
    """The rows of plan.json: each run's name, label, group, baseline, FLOPs and the files it was made from."""
    return [{"name": v.name, "label": v.label, "group": v.group, "baseline": v.baseline,
             "gflops": measures[v.name]["gflops_224"], "params": measures[v.name]["params"],
             "sources": list(v.sources)} for v in variants]


def save(experiment_dir: Path, base: str, recipe: str, seeds: list[int], rows: list[dict]) -> None:
    """Record what the experiment asks for; a later request adds its runs and seeds to those already there. The
    paper's numbers to compare with are those of the recipe ours derives from (the root of its `inherit` chain)."""
    from .roadmap import recipe_files

    def change(old: dict | None) -> dict:
        runs = {r["name"]: r for r in (old or {"runs": []})["runs"]}
        for row in rows:
            before = runs.get(row["name"], {})
            # asked for again: it keeps its place and its seeds, gains these, and keeps the baseline it was compared
            # with (the full path of a leave-one-out has none of its own)
            row["seeds"] = sorted(set(before.get("seeds", [])) | set(seeds))
            row["baseline"] = row["baseline"] or before.get("baseline")
            runs[row["name"]] = row
        return {"base": base, "recipe": recipe, "paper_recipe": recipe_files(recipe)[0].stem,
                "runs": list(runs.values())}

    results.update_plan(experiment_dir, change)


def describe(variants: list[Variant], jobs: list[Job], rows: list[dict]) -> str:
    """The dry-run text: each run, what it changes from the run it is measured against (the one before it on a
    path), its FLOPs, and whether it is done."""
    from .model.network import adapts_input_size

    lines, previous, seen = [], None, {}
    by_name = {e["name"]: e for e in rows}
    cfgs = {v.name: v.cfg for v in variants}
    shown_against = results.compared_with(list(cfgs), {v.name: v.baseline for v in variants})
    for v in variants:
        compared = shown_against[v.name]
        changes = diff(cfgs[compared], v.cfg) if compared is not None else {}
        model_changes = {k: c for k, c in changes.items() if not k.startswith(("train.", "data."))}
        what = "; ".join(f"{k}: {a} → {b}" for k, (a, b) in model_changes.items())
        if not what:
            what = ("no change in the network" if compared is not None else "(the start)" if v.baseline is None
                    else f"(compared with {v.baseline}, which this request leaves out)")
        if compared is not None and compared != previous:
            what = f"against {compared}: {what}"
        if v.baseline is not None and compared is not None and compared != v.baseline:
            what += f"\n    its Δ in the table is against {v.baseline}, which this request leaves out: none unless " \
                    f"the experiment has it"
        twin = seen.setdefault(v.cfg.model_dump_json(), v.name)
        if twin != v.name:  # e.g. a step left out whose change a later step makes anyway
            what += f"\n    the same network as {twin}"
        if isinstance(v.cfg, TimmNet):
            adapted = f", adapted to {v.cfg.timm.img_size}²" if adapts_input_size(v.cfg) else ""
            what = f"timm model {v.cfg.timm.name}{adapted}"
        states = []
        for job in (j for j in jobs if j.name == v.name):
            path = Path(job.run_dir)
            state = "done" if results.is_done(path) else "resume" if (path / "checkpoint.pt").exists() else "run"
            states.append(f"seed{job.seed}: {state}")
        e = by_name[v.name]
        lines.append(f"{v.name:<28} {e['gflops']:5.2f} GFLOPs {e['params'] / 1e6:6.1f} M  [{', '.join(states)}]\n"
                     f"    {what}")
        previous = v.name
    if variants:
        cfg = variants[0].cfg
        t, d = cfg.train, cfg.data
        scale = f", width × {cfg.stages.width_mult}, depth × {cfg.stages.depth_mult}" if cfg.stages else ""
        lines.append(f"recipe: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g} at batch {t.base_batch_size}, "
                     f"data {d.source} at {d.img_size}²{scale}, pretrained: {t.pretrained}")
    return "\n".join(lines)
