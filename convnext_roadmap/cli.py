"""The `roadmap` command: each subcommand parses its arguments, calls into the modules that own the work, prints."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import typing
import warnings
from pathlib import Path
from typing import Sequence

from . import roadmap
from .errors import RoadmapError


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line (and exit code 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _roadmap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--roadmap", metavar="FILE", help="a roadmap of your own, laid out as ablations/roadmap.yaml "
                                                     "(default: the paper's)")
    p.add_argument("--base", help="the starting network: one of the roadmap's bases (the paper's: resnet50, the "
                                  "default, and resnet200)")


def _selection(p: argparse.ArgumentParser, upto_help: str = "apply the path's steps up to this one",
               modes: bool = False) -> None:
    _roadmap_flags(p)
    p.add_argument("--upto", metavar="STEP", help=upto_help)
    one = p.add_mutually_exclusive_group() if modes else p
    one.add_argument("--patch", action="append", default=[], metavar="STEP|FILE",
                     help="apply a step or a YAML patch file of your own (repeatable, applied in order)")
    if modes:
        one.add_argument("--leave-one-out", action="store_true",
                         help="the full path, and for each step the path without it")
        p.add_argument("--steps", metavar="A,B,C", help="only these runs (step, sweep or leave-one-out names)")
        p.add_argument("--sweep", metavar="NAME", help="add a sweep's variants (ablations/sweeps/NAME.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. block.kernel_size=9 (repeatable)")


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a number > 0")
    return value


def positive(text: str) -> int:
    """An argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a whole number ≥ 1")
    return value


def _format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["table", "csv", "md"], default="table")


def _print_frame(df, fmt: str) -> None:
    if fmt == "csv":
        print(df.to_csv(index=False), end="")
    elif fmt == "md":
        print(df.to_markdown(index=False))
    else:
        print(df.to_string(index=False, na_rep=""))  # an empty cell, as the README shows, not NaN


def _names(text: str | None) -> list[str]:
    return [n for n in (text or "").split(",") if n]


def _requested(args, recipe=None, data=None) -> list[roadmap.Variant]:
    """The networks a command asks for (roadmap.request, the front door), their configs checked (preflight), then
    `train.pretrained: true` made the hub weights of the timm model each is."""
    from . import preflight

    refs = _names(getattr(args, "references", None))
    with_refs = getattr(args, "with_references", None)
    if with_refs is not None:
        refs += _names(with_refs) if with_refs != "default" else list(roadmap.references(args.base))
    context = roadmap.Context(args.base, recipe, data, tuple(args.overrides), args.roadmap)
    variants = roadmap.request(context, upto=args.upto,
                               patches=args.patch, leave_one_out=getattr(args, "leave_one_out", False),
                               sweep=getattr(args, "sweep", None), steps=_names(getattr(args, "steps", None)),
                               references=refs)
    preflight.check_configs(variants)
    return [roadmap.with_hub_weights(v) for v in variants]


def cmd_steps(args) -> None:
    path = args.roadmap.steps(args.base)  # an unknown base is an error here
    rows = [(args.base, args.roadmap.bases()[args.base], "the starting network")]
    rows += [(s.name, s.label, s.about) for s in path]
    width = max(len(r[0]) for r in rows)
    label_width = max(len(r[1]) for r in rows)
    for name, label, about in rows:
        print(f"{name:<{width}}  {label:<{label_width}}  {about}")


def cmd_show(args) -> None:
    from .config import diff
    from .loading import to_yaml

    if args.data and not args.recipe:
        raise RoadmapError("--data sets a recipe's data.source: give --recipe too")
    from .preflight import check_config

    cfg, source_of = roadmap.resolve_with_sources(args.upto, args.base, args.patch, args.overrides, args.recipe,
                                                  args.data, args.roadmap)
    check_config(cfg, source_of)
    if args.diff:
        base = roadmap.resolve_config(None, args.base, roadmap=args.roadmap)
        for key, (before, after) in diff(base, cfg).items():
            print(f"{key}: {before} → {after}")
        return
    print(to_yaml(cfg), end="")


def cmd_flops(args) -> None:
    import pandas as pd

    from . import paper
    from .measure import complexity

    rows, variants = [], _requested(args)
    scaled = [v for v in variants if v.cfg.stages is not None and (v.cfg.stages.width_mult, v.cfg.stages.depth_mult)
              != (1.0, 1.0)]
    if scaled:  # the multipliers are a recipe's training scale; this table is the paper's
        print("note: GFLOPs and params are counted at the paper's scale, without stages.width_mult/depth_mult; "
              "a run's summary.json has the trained network's (trained_gflops, trained_params)", file=sys.stderr)
    for v in variants:
        ours = complexity(v.cfg)
        ref = paper.row(args.base, v.name)
        rows.append({"step": v.name, "label": v.label, "paper_gflops": ref["paper_gflops"] if ref else None,
                     "gflops": round(ours["gflops"], 3), "gflops_fvcore": round(ours["gflops_fvcore"], 3),
                     "paper_params_m": ref["paper_params_m"] if ref else None,
                     "params_m": round(ours["params"] / 1e6, 3), **paper.check_flops(ours["gflops"], ref)})
    _print_frame(pd.DataFrame(rows), args.format)


def cmd_bench(args) -> None:
    import pandas as pd

    from .measure import bench
    from .device import pick_device

    pick_device(args.device)  # one line here, not a traceback from the first model moved there
    rows = bench(_requested(args), args.roadmap.timm_models(args.base), batch_size=args.batch_size,
                 img_size=args.img_size, device=args.device, rounds=args.rounds, amp=args.amp,
                 progress=lambda name: print(f"  measured {name}", file=sys.stderr))
    print(f"# {args.device}, batch {args.batch_size}, {args.img_size}², channels_last"
          + (", bf16 autocast" if args.amp else "") + f", median of {args.rounds} alternating rounds")
    _print_frame(pd.DataFrame(rows), args.format)


def cmd_doctor(args) -> int:
    from .doctor import Doctor

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    doctor = Doctor(device, args.data, say=lambda line: print(line, flush=True))  # a device not here: one line
    print(f"# roadmap doctor --device {device}" + (f" --data {args.data}" if args.data else ""), flush=True)
    return doctor.run()


def cmd_paper(args) -> None:
    import math

    import pandas as pd

    from . import paper

    roadmap.check_base(args.base)  # an unknown base: one line
    steps = paper.own_deltas(args.base)
    rows = pd.DataFrame([{"step": r["step"], "Δ top-1": f"{r['delta']:+.2f}",
                          "p": "" if math.isnan(r["p"]) else f"{r['p']:.4f}",
                          "Holm p": "" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.2f}", "verdict": r["verdict"]}
                         for r in steps])
    tested = sum(not math.isnan(r["p"]) for r in steps)
    print(f"# the paper's own Δs on the {args.base} path: each step against the one before, Welch's t on the "
          f"printed means and stds of 3 runs, Holm over the {tested} tested" if tested else
          f"# the paper's own Δs on the {args.base} path: it prints no stds for them (one run each), so none is "
          f"tested")
    print(rows.to_string(index=False))


def cmd_seeds(args) -> None:
    from . import seeds

    if args.sigma is not None and args.experiment is None:
        if args.rows is None:
            raise RoadmapError("--sigma without an EXPERIMENT: give --rows K too (the networks compared together)")
        exp_dir = None
    else:
        exp_dir = _experiment(args)
    head, frame = seeds.table(exp_dir, delta=args.delta, sigma=args.sigma, networks=args.rows,
                              base=roadmap.DEFAULT_BASE)
    print(head)
    print(frame.to_string(index=False))


def _results_root(args) -> Path:
    # absolute: job records keep their run folders' paths, which later commands read from any folder
    return Path(args.results).resolve() if args.results else Path.cwd() / "results"


def cmd_run(args) -> int:
    from . import launch, preflight
    from .executors import make, registry

    exp_dir = _results_root(args) / (args.experiment or f"{args.base}-{Path(str(args.recipe)).stem}")
    # the launch's own flags before the executor's options are read: --wait with an executor that has nothing to
    # wait for says so first (preflight.check asks again, for the Python API's callers)
    wandb = {k: v for k, v in (("project", args.wandb_project), ("entity", args.wandb_entity)) if v}
    preflight.check_log_flags(args.log, args.log_every_steps, wandb)
    preflight.check_wait(registry()[args.executor], args.wait, args.timeout_wait)
    flags = dict.fromkeys(name for cls in registry().values() for name in cls.Options.model_fields)
    executor = make(args.executor, exp_dir, {name: getattr(args, name) for name in flags})
    args.overrides = [*args.overrides, *([f"train.pretrained={args.pretrained}"] if args.pretrained else [])]
    variants = _requested(args, recipe=args.recipe, data=args.data)
    if not variants:
        raise RoadmapError("nothing to run: the request names no network")
    first = variants[0].cfg.train.seed
    return launch.run(variants, list(range(first, first + args.seeds)), exp_dir, executor, base=args.base,
                      recipe=str(args.recipe), device=args.device, force=args.force, dry_run=args.dry_run,
                      wait=args.wait, timeout_wait=args.timeout_wait, log=args.log,
                      log_every_steps=args.log_every_steps, wandb=wandb)


def _experiment(args) -> Path:
    from . import results

    return results.find_experiment(_results_root(args), args.experiment)


def _report(args):
    """The experiment's report (launch.settle_and_report), the lines of jobs found ended without a summary on
    stderr (stdout may be a CSV); (the experiment's folder, report.write's value)."""
    from .launch import settle_and_report

    exp_dir = _experiment(args)
    return exp_dir, settle_and_report(exp_dir, say=lambda line: print(line, file=sys.stderr), quiet=True)


def cmd_table(args) -> None:
    exp_dir, (table, _, under) = _report(args)
    if args.format == "table":
        print(table.to_string(index=False))
        print(under)
    else:  # stdout stays the file's text, for a pipe
        print((exp_dir / f"table.{args.format}").read_text(), end="")
        print(under, file=sys.stderr)


def cmd_plot(args) -> None:
    _, (_, paths, _) = _report(args)
    for path in paths:
        print(path)


def cmd_status(args) -> None:
    import pandas as pd

    from .executors import records

    print(pd.DataFrame(records.status(_experiment(args))).to_string(index=False))


def cmd_cancel(args) -> None:
    from . import results
    from .executors import records

    cancelled = records.cancel(results.read_jobs(_experiment(args)))
    print(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}" if cancelled else "no live jobs to cancel")


def cmd_eval(args) -> None:
    from .predict import evaluate_run, find_run
    from .device import pick_device

    path = find_run(_results_root(args), args.run)
    m = evaluate_run(path, args.data, pick_device(args.device), args.flip)
    print(f"{m['run']}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  ({m['images']} images)")


def cmd_predict(args) -> None:
    from .predict import find_run, predict
    from .device import pick_device

    path = find_run(_results_root(args), args.run)
    n = predict(path, args.data, Path(args.out), pick_device(args.device), args.flip)
    print(f"wrote {args.out}: {n} predictions (id,label)")


def cmd_subset(args) -> None:
    from .data import make_subset

    chosen = make_subset(Path(args.source), Path(args.target), args.classes)
    print(f"linked {len(chosen)} classes ({chosen[0]} … {chosen[-1]}) of {args.source} into {args.target}")


def _executor_flags(p: argparse.ArgumentParser) -> None:
    """--executor, its choices from the registry; a flag for each field of the executors' Options (once, where two
    executors declare the same field); --wait for the executors that return before their jobs end."""
    from .executors import registry

    kinds = registry()
    p.add_argument("--executor", choices=list(kinds), default="local", metavar="|".join(kinds),
                   help="where runs execute: " + "; ".join(f"{name}: {_first_sentence(cls.__doc__)}"
                                                           for name, cls in kinds.items()) + " (default: local)")
    owners: dict[str, list[str]] = {}
    for name, cls in kinds.items():
        for field in cls.Options.model_fields:
            owners.setdefault(field, []).append(name)
    for field, names in owners.items():
        info = kinds[names[0]].Options.model_fields[field]
        kind = _scalar(info.annotation)
        text = f"--executor {' or '.join(names)}: {info.description or field.replace('_', ' ')}"
        flag = f"--{field.replace('_', '-')}"
        if kind is bool:
            # --flag / --no-flag; neither: None, and the profile's own value stands
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        minimum = next((getattr(m, "ge") for m in info.metadata if hasattr(m, "ge")), None)
        p.add_argument(flag, metavar="N" if kind in (int, float) else "NAME",
                       type=positive if kind is int and minimum == 1 else kind, help=text)
    waiting = " or ".join(name for name, cls in kinds.items() if not cls.blocking)
    p.add_argument("--wait", action="store_true",
                   help=f"wait for the jobs of an executor that returns at once ({waiting}), then the table")
    p.add_argument("--timeout-wait", type=float, metavar="MIN", help="with --wait: stop waiting after MIN minutes")


def _scalar(annotation) -> type:
    """int for `int | None`, `Annotated[int, Field(ge=1)] | None` and the like."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _scalar(typing.get_args(annotation)[0])
    kinds = [t for t in typing.get_args(annotation) if t is not type(None)]
    return _scalar(kinds[0]) if kinds else annotation


def _first_sentence(doc: str | None) -> str:
    """A docstring's first sentence: up to the first ". " (not a dot inside a name such as slurm/default.yaml)."""
    text = " ".join((doc or "").split())
    return text.split(". ")[0].rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="roadmap", description="Replay the ConvNeXt paper's 'modernizing a ResNet' roadmap as "
                                                "composable ablations: measure, train, tabulate and plot every step.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("steps", help="list the roadmap's steps with the paper's labels")
    _roadmap_flags(p)
    p.set_defaults(func=cmd_steps)

    p = sub.add_parser("show", help="print a resolved config as YAML")
    _selection(p)
    p.add_argument("--diff", action="store_true", help="print only what differs from the base")
    p.add_argument("--recipe", metavar="NAME|FILE", help="include a training recipe's train and data sections")
    p.add_argument("--data", metavar="SPEC", help="data.source, for a recipe that leaves it to --data")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("flops", help="GFLOPs and parameters of every step, beside the paper's")
    _selection(p, "measure the path only up to this step", modes=True)
    _format(p)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("bench", help="throughput and peak memory of every step; timm's models beside the ends")
    _selection(p, "measure the path only up to this step", modes=True)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=positive, default=16)
    p.add_argument("--img-size", type=positive, default=224)
    p.add_argument("--rounds", type=positive, default=5, help="timed rounds per model (after one warm-up round)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast, as the paper's recipe trains (any device)")
    _format(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("doctor", help="check that this machine trains the paper's recipe as it should (≤ 5 min)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="the device to check (default: cuda where there is one)")
    p.add_argument("--data", metavar="SPEC", help="time the data path on these images (default: generated JPEGs)")
    p.set_defaults(func=cmd_doctor)

    from .job import TENSORBOARD_EVERY_STEPS

    p = sub.add_parser("run", help="train every step (up to --upto), then write the table and the plots")
    _selection(p, "train the path up to this step (default: all of it)", modes=True)
    p.add_argument("--recipe", default="cpu_proxy", metavar="NAME|FILE",
                   help=f"how to train: {', '.join(roadmap.recipes())} (default: cpu_proxy), or a YAML file")
    p.add_argument("--data", metavar="SPEC", help="synthetic (the recipe's default), imagefolder:PATH or csv:PATH")
    p.add_argument("--seeds", type=positive, default=3, help="seeds per run (default 3, as the paper reports)")
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
    p.add_argument("--log", action="append", choices=["tensorboard", "wandb"], default=[],
                   help="also send each run's scalars to TensorBoard (its folder) or Weights & Biases; give twice "
                        "for both")
    p.add_argument("--log-every-steps", type=positive, metavar="STEPS",
                   help=f"with --log: a training-loss point every this many optimizer steps (default "
                        f"{TENSORBOARD_EVERY_STEPS}; train.log_every spaces the progress lines, in batches)")
    p.add_argument("--wandb-project", metavar="NAME",
                   help="with --log wandb: the W&B project (default: WANDB_PROJECT, else convnext-roadmap)")
    p.add_argument("--wandb-entity", metavar="NAME", help="with --log wandb: the W&B entity (default: WANDB_ENTITY)")
    _executor_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("subset", help="link a class subset of an ImageFolder tree (ImageNet-100 for imagenet_proxy)")
    p.add_argument("source", help="an ImageFolder tree: SOURCE/train/<class>/, SOURCE/val/<class>/")
    p.add_argument("target", help="where the subset's train/ and val/ are linked")
    p.add_argument("--classes", type=positive, default=100, help="how many classes: every k-th in sorted order")
    p.set_defaults(func=cmd_subset)

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

    p = sub.add_parser("paper", help="the paper's own Δs under Welch's t and Holm: which of its steps pass")
    p.add_argument("--base", default=roadmap.DEFAULT_BASE)
    p.set_defaults(func=cmd_paper)

    p = sub.add_parser("seeds", help="how many seeds a Δ needs (80%% power), and what they cost")
    p.add_argument("experiment", nargs="?", help="its pooled σ, networks and run times (default: the latest)")
    p.add_argument("--delta", type=positive_number, metavar="D", help="the Δ to resolve, in points (default: the table's and "
                                                             "the paper's Δs, and 1)")
    p.add_argument("--sigma", type=positive_number, metavar="S", help="the seed-to-seed σ, in points (default: the "
                                                             "experiment's pooled one)")
    p.add_argument("--rows", type=positive, metavar="K", help="networks compared in one family (default: the "
                                                               "experiment's)")
    p.add_argument("--results", metavar="DIR", help="where experiments are (default: ./results)")
    p.set_defaults(func=cmd_seeds)

    for name, func, text in (("table", cmd_table, "build table.csv and table.md of an experiment"),
                             ("plot", cmd_plot, "draw an experiment's figures (Figure 2 replica, curves)"),
                             ("status", cmd_status, "the submitted jobs of an experiment, one line each"),
                             ("cancel", cmd_cancel, "cancel the submitted jobs of an experiment that have not ended")):
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
    if threading.current_thread() is threading.main_thread():  # a kill ends a run as Ctrl-C does, cleaning up
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if "roadmap" in vars(args):  # the roadmap file read and checked first, its first base the default
            args.roadmap = roadmap.load_roadmap(args.roadmap)
            args.base = args.base or args.roadmap.default_base()
        code = args.func(args) or 0
        sys.stdout.flush()  # here, where a reader that has gone is handled, not at exit
        return code
    except RoadmapError as e:
        # raised in a data-loader worker, it arrives wrapped: its own line is the last
        line = str(e).strip().splitlines()[-1].split("RoadmapError: ", 1)[-1]
        print(f"roadmap: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what it stopped has said so (a run, its saved place); no traceback to read
        print("roadmap: interrupted", file=sys.stderr)
        return 130  # as a shell reports a process ended by SIGINT
    except BrokenPipeError:  # `roadmap steps | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail too
        return 141  # as a shell reports a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
