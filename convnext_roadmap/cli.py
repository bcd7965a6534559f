"""The `roadmap` command. Each subcommand parses, calls into the modules, and prints."""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path
from typing import Sequence

from . import config, roadmap
from .errors import RoadmapError


def _selection(p: argparse.ArgumentParser, upto_help: str = "apply the path's steps up to this one") -> None:
    p.add_argument("--base", default="resnet50", help="the starting network (resnet50, resnet200)")
    p.add_argument("--upto", metavar="STEP", help=upto_help)
    p.add_argument("--patch", action="append", default=[], metavar="STEP|FILE",
                   help="apply a step or a YAML patch file of your own (repeatable, applied in order)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. block.kernel_size=9 (repeatable)")


def _format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["table", "csv", "md"], default="table")


def _print_frame(df, fmt: str) -> None:
    if fmt == "csv":
        print(df.to_csv(index=False), end="")
    elif fmt == "md":
        print(df.to_markdown(index=False))
    else:
        print(df.to_string(index=False))


def cmd_steps(args) -> None:
    rows = [(args.base, roadmap.bases()[args.base], "the starting network")]
    rows += [(s.name, s.label, s.about) for s in roadmap.steps(args.base)]
    width = max(len(r[0]) for r in rows)
    label_width = max(len(r[1]) for r in rows)
    for name, label, about in rows:
        print(f"{name:<{width}}  {label:<{label_width}}  {about}")


def cmd_show(args) -> None:
    cfg = roadmap.resolve_config(args.upto, args.base, args.patch, args.overrides, args.recipe)
    if args.diff:
        base = roadmap.resolve_config(None, args.base)
        for key, (before, after) in config.diff(base, cfg).items():
            print(f"{key}: {before} → {after}")
        return
    print(config.to_yaml(cfg), end="")


def _requested(args, **recipe) -> list[roadmap.Variant]:
    """The networks a command asks for: the path (up to --upto, --steps among them, --sweep beside), or with
    --patch the one network those patches make; then the reference models (--with-references, --references)."""
    only = [s for s in (getattr(args, "steps", None) or "").split(",") if s]
    refs = _names(getattr(args, "references", None))
    with_refs = getattr(args, "with_references", None)
    if with_refs is not None:
        refs += _names(with_refs) if with_refs != "default" else list(roadmap.references(args.base))
    variants = []
    if not refs or args.upto or only or args.patch or getattr(args, "sweep", None):
        variants = roadmap.request(args.upto, args.base, only, args.patch, getattr(args, "leave_one_out", False),
                                   getattr(args, "sweep", None), args.overrides, **recipe)
    return variants + [roadmap.reference_variant(name, recipe.get("recipe"), args.overrides, recipe.get("data"))
                       for name in dict.fromkeys(refs)]


def _names(text: str | None) -> list[str]:
    return [n for n in (text or "").split(",") if n]


def cmd_flops(args) -> None:
    import pandas as pd

    from .measure import complexity

    paper = roadmap.paper_reference()
    rows = []
    for v in _requested(args):
        ours = complexity(v.cfg)
        ref = paper.loc[(args.base, v.name)] if (args.base, v.name) in paper.index else None
        row = {"step": v.name, "label": v.label,
               "paper_gflops": ref["paper_gflops"] if ref is not None else None,
               "gflops": round(ours["gflops"], 3), "gflops_fvcore": round(ours["gflops_fvcore"], 3),
               "params_m": round(ours["params"] / 1e6, 3)}
        row.update(_compare(ours["gflops"], ref))
        rows.append(row)
    _print_frame(pd.DataFrame(rows), args.format)


FLOPS_TOLERANCE = 0.01  # the paper's own rounding


def _compare(gflops: float, ref) -> dict:
    """Our GFLOPs against the paper's: the difference, and whether it is within rounding of what the paper says
    (or, for its known anomalies, of what it should have said)."""
    import pandas as pd

    if ref is None:
        return {"diff": None, "check": "no paper number"}
    expected = ref["expected_gflops"] if pd.notna(ref["expected_gflops"]) else ref["paper_gflops"]
    ok = abs(gflops - expected) <= FLOPS_TOLERANCE + 1e-9
    check = "ok" if ok else f"OFF (expected {expected})"
    if ok and expected != ref["paper_gflops"]:
        check = f"ok; paper anomaly: the paper says {ref['paper_gflops']}"
    return {"diff": round(gflops - ref["paper_gflops"], 3) + 0.0, "check": check}  # + 0.0: no "-0"


def cmd_bench(args) -> None:
    import pandas as pd
    import timm
    import torch

    from .measure import measure_speed
    from .model import build_model, load_timm_state_dict

    if args.device == "cuda" and not torch.cuda.is_available():
        raise RoadmapError("--device cuda: no CUDA device is available here")
    ends = roadmap.timm_models(args.base)
    rows = []
    for v in _requested(args):
        models = {v.name: build_model(v.cfg)}
        if v.name in ends:
            # timm's model beside ours, with the same weights, so both compute the same numbers
            reference = timm.create_model(ends[v.name], pretrained=False)
            load_timm_state_dict(models[v.name], reference.state_dict())
            models[f"timm:{ends[v.name]}"] = reference
        speeds = measure_speed(models, batch_size=args.batch_size, img_size=args.img_size, device=args.device,
                               rounds=args.rounds)
        ours = speeds[v.name]
        row = {"step": v.name, "infer_img_s": round(ours.infer_img_s, 1), "train_img_s": round(ours.train_img_s, 1),
               "peak_mem_mb": round(ours.peak_mem_mb) if ours.peak_mem_mb is not None else None,
               "timm_model": None, "ratio_vs_timm_infer": None, "ratio_vs_timm_train": None}
        if v.name in ends:
            theirs = speeds[f"timm:{ends[v.name]}"]
            row.update(timm_model=ends[v.name],
                       ratio_vs_timm_infer=round(ours.infer_img_s / theirs.infer_img_s, 3),
                       ratio_vs_timm_train=round(ours.train_img_s / theirs.train_img_s, 3))
        rows.append(row)
        print(f"  measured {v.name}", file=sys.stderr)
    print(f"# {args.device}, batch {args.batch_size}, {args.img_size}², median of {args.rounds} alternating rounds"
          + (", channels_last + bf16 autocast" if args.device == "cuda" else ""))
    _print_frame(pd.DataFrame(rows), args.format)


PROFILE_FLAGS = {"partition": str, "gpus_per_node": int, "tasks_per_node": int, "nodes": int, "timeout_min": int,
                 "account": str, "qos": str, "constraint": str, "mem_gb": int, "cpus_per_task": int}


def _results_root(args) -> Path:
    return Path(args.results) if args.results else Path.cwd() / "results"


def cmd_run(args) -> int:
    from . import launch
    from .data import load_splits

    recipe = args.recipe
    if args.pretrained is not None:
        args.overrides = [*args.overrides, f"train.pretrained={args.pretrained}"]
    variants = _requested(args, recipe=recipe, data=args.data)
    seeds_from = variants[0].cfg.train.seed
    seeds = list(range(seeds_from, seeds_from + args.seeds))
    experiment = args.experiment or f"{args.base}-{Path(str(recipe)).stem}"
    exp_dir = _results_root(args) / experiment
    train_split, _ = load_splits(variants[0].cfg.data.source)  # a bad --data fails here, before anything is written
    launch.preflight(variants, len(train_split.classes))
    jobs = launch.make_jobs(variants, seeds, exp_dir, args.device,
                            {"base": args.base, "experiment": experiment, "recipe": str(recipe)})
    if not args.force:
        launch.check_conflicts(jobs)
    entries = launch.plan_entries(variants)
    profile = None
    if args.executor != "inprocess":
        if args.executor == "slurm" and shutil.which("sbatch") is None:
            raise RoadmapError("--executor slurm: no sbatch on PATH (is this a SLURM login node? "
                               "slurm/local-cluster/up.sh brings up a one-node cluster here)")
        profile = launch.load_profile(args.cluster, {k: getattr(args, k) for k in PROFILE_FLAGS})
    if args.dry_run:
        print(f"# {exp_dir}: {len(variants)} run(s) × {len(seeds)} seed(s), nothing is written (dry run)")
        print(launch.describe_plan(variants, jobs, entries))
        if profile is not None:
            print(f"# {args.executor} jobs, one per run and seed, as one array; sbatch parameters:")
            print(config.to_yaml(profile), end="")
        return 0
    launch.save_plan(exp_dir, args.base, str(recipe), seeds, entries)
    print(f"# {exp_dir}: {len(variants)} run(s) × {len(seeds)} seed(s)", flush=True)
    if profile is None:
        outcomes = launch.run_in_process(jobs, exp_dir, force=args.force)
        _table_and_plots(exp_dir)
        return 1 if any(state == "failed" for _, state in outcomes) else 0
    todo = launch.pending(jobs, exp_dir, args.force)
    records = launch.submit(todo, profile, args.executor, exp_dir) if todo else []
    for r in records:
        if any(r["name"] == j.name and r["seed"] == j.seed for j in todo):
            print(f"→ {r['name']} seed{r['seed']}: job {r['job_id']}, log {r['stdout']}", flush=True)
    if args.executor == "slurm" and not args.wait:
        print(f"submitted {len(todo)} job(s); watch with `roadmap status {experiment}`"
              + (f" --results {args.results}" if args.results else ""))
        return 0
    if args.executor == "slurm":
        launch.wait(exp_dir)
    _table_and_plots(exp_dir)
    states = {row["state"] for row in launch.status(exp_dir)} if records else set()
    return 1 if states - {"COMPLETED"} else 0


def _table_and_plots(exp_dir: Path) -> None:
    from . import launch, plots, results

    table = results.write_table(exp_dir, launch.job_failures(exp_dir))
    print(table.to_string(index=False))
    paths = plots.plot_experiment(exp_dir)
    print(f"wrote {exp_dir / 'table.csv'}, {exp_dir / 'table.md'}, " + ", ".join(p.name for p in paths))


def cmd_eval(args) -> None:
    from .predict import evaluate_run, find_run
    from .train import pick_device

    path = find_run(_results_root(args), args.run)
    m = evaluate_run(path, args.data, pick_device(args.device), args.flip)
    print(f"{m['run']}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  ({m['images']} images)")


def cmd_predict(args) -> None:
    from .predict import find_run, predict
    from .train import pick_device

    path = find_run(_results_root(args), args.run)
    n = predict(path, args.data, Path(args.out), pick_device(args.device), args.flip)
    print(f"wrote {args.out}: {n} predictions (id,label)")


def cmd_table(args) -> None:
    from . import results

    from . import launch

    exp_dir = results.find_experiment(_results_root(args), args.experiment)
    table = results.write_table(exp_dir, launch.job_failures(exp_dir))
    if args.format == "csv":
        print((exp_dir / "table.csv").read_text(), end="")
    elif args.format == "md":
        print((exp_dir / "table.md").read_text(), end="")
    else:
        print(table.to_string(index=False))


def cmd_status(args) -> None:
    import pandas as pd

    from . import launch, results

    exp_dir = results.find_experiment(_results_root(args), args.experiment)
    rows = launch.status(exp_dir)
    print(pd.DataFrame(rows).to_string(index=False))


def cmd_cancel(args) -> None:
    from . import launch, results

    exp_dir = results.find_experiment(_results_root(args), args.experiment)
    cancelled = launch.cancel(exp_dir)
    print(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}" if cancelled else "no live jobs to cancel")


def cmd_plot(args) -> None:
    from . import plots, results

    exp_dir = results.find_experiment(_results_root(args), args.experiment)
    for path in plots.plot_experiment(exp_dir):
        print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roadmap", description="Replay the ConvNeXt paper's 'modernizing a ResNet' roadmap as composable "
                                    "ablations: measure, train, tabulate and plot every step.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("steps", help="list the roadmap's steps with the paper's labels")
    p.add_argument("--base", default="resnet50")
    p.set_defaults(func=cmd_steps)

    p = sub.add_parser("show", help="print a resolved config as YAML")
    _selection(p)
    p.add_argument("--diff", action="store_true", help="print only what differs from the base")
    p.add_argument("--recipe", metavar="NAME|FILE", help="include a training recipe's train and data sections")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("flops", help="GFLOPs and parameters of every step, beside the paper's")
    _selection(p, "measure the path only up to this step")
    p.add_argument("--steps", metavar="A,B,C", help="only these steps of the path")
    p.add_argument("--sweep", metavar="NAME", help="add a sweep's variants (ablations/sweeps/NAME.yaml)")
    _format(p)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("bench", help="throughput and peak memory of every step; timm's models beside the ends")
    _selection(p, "measure the path only up to this step")
    p.add_argument("--steps", metavar="A,B,C", help="only these steps of the path, e.g. resnet50,layer_scale")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model (after one warm-up round)")
    _format(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run", help="train every step (up to --upto), then write the table and the plots")
    _selection(p, "train the path up to this step (default: all of it)")
    p.add_argument("--steps", metavar="A,B,C", help="only these runs of the path (step or sweep names)")
    p.add_argument("--leave-one-out", action="store_true",
                   help="the full path, and for each step the path without it")
    p.add_argument("--sweep", metavar="NAME", help="add a sweep's variants (ablations/sweeps/NAME.yaml)")
    p.add_argument("--recipe", default="cpu_proxy", metavar="NAME|FILE",
                   help="how to train: cpu_proxy (default), paper_in1k, smoke, or a YAML file")
    p.add_argument("--data", metavar="SPEC", help="synthetic (the recipe's default), imagefolder:PATH or csv:PATH")
    p.add_argument("--seeds", type=int, default=1, help="seeds per run (the paper reports 3)")
    p.add_argument("--experiment", metavar="NAME", help="results/NAME (default: BASE-RECIPE)")
    p.add_argument("--results", metavar="DIR", help="where experiments go (default: ./results)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is done; write nothing")
    p.add_argument("--force", action="store_true", help="train finished runs again")
    p.add_argument("--with-references", nargs="?", const="default", metavar="NAMES",
                   help="also train timm reference models (default: those listed for the base in "
                        "ablations/references.yaml, e.g. Swin-T)")
    p.add_argument("--references", metavar="NAMES",
                   help="timm models to train (comma list); without --upto/--steps, only those")
    p.add_argument("--pretrained", nargs="?", const="true", metavar="FILE",
                   help="start from pretrained weights: timm's hub, or a local .safetensors/.pth file")
    p.add_argument("--executor", choices=["inprocess", "local", "slurm"], default="inprocess",
                   help="where runs execute: this process (default), submitit's local queue, or SLURM jobs")
    p.add_argument("--cluster", default="default", metavar="PROFILE",
                   help="a cluster profile: slurm/PROFILE.yaml or a YAML file (default: slurm/default.yaml)")
    for flag, kind in PROFILE_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", type=kind, help=f"override the profile's {flag}")
    p.add_argument("--wait", action="store_true", help="with --executor slurm: wait for the jobs, then the table")
    p.set_defaults(func=cmd_run)

    for name, func, text in (("eval", cmd_eval, "evaluate a finished run's best weights"),
                             ("predict", cmd_predict, "write Kaggle-style predictions (id,label) of a run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="a run folder, or EXPERIMENT/RUN[/seedK] under results/")
        p.add_argument("--data", required=name == "predict", metavar="SPEC",
                       help="csv:PATH with PATH/test/ (predict); default for eval: the run's own data")
        if name == "predict":
            p.add_argument("--out", default="submission.csv")
        p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
        p.add_argument("--device", default="auto")
        p.add_argument("--results", metavar="DIR", help="where experiments are (default: ./results)")
        p.set_defaults(func=func)

    for name, func, text in (("table", cmd_table, "build table.csv and table.md of an experiment"),
                             ("plot", cmd_plot, "draw an experiment's figures (Figure 2 replica, curves)"),
                             ("status", cmd_status, "the SLURM jobs of an experiment, one line each"),
                             ("cancel", cmd_cancel, "cancel the SLURM jobs of an experiment that have not ended")):
        p = sub.add_parser(name, help=text)
        p.add_argument("experiment", nargs="?", help="its name under results/ (default: the latest)")
        p.add_argument("--results", metavar="DIR", help="where experiments are (default: ./results)")
        if name == "table":
            _format(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # fvcore and timm import torch.jit.script, which torch now calls deprecated on every start
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except RoadmapError as e:
        print(f"roadmap: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
