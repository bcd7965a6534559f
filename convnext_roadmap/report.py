"""An experiment's report: its table from the result store with the paired statistics of every step, its fidelity
to the paper, written as table.csv, table.md, stats.json and fidelity.json, and its figures drawn from that same
table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import plots, results, stats
from .experiment import Experiment


def annotate(table: pd.DataFrame, top1: dict[str, dict[int, float]],
             baselines: dict[str, str | None]) -> tuple[pd.DataFrame, dict]:
    """The table with each row's paired Δ against its baseline (stats.compare), after top1_std."""
    compared = stats.compare(top1, baselines)
    columns = {"delta_top1": "delta", "delta_ci_low": "ci_low", "delta_ci_high": "ci_high", "delta_p": "p_t",
               "delta_p_holm": "p_holm", "delta_resolvable": "resolvable", "verdict": "verdict"}
    out = table.copy()
    at = out.columns.get_loc("top1_std") + 1
    for i, (column, key) in enumerate(columns.items()):
        out.insert(at + i, column, [compared.get(s, {}).get(key) for s in out["step"]])
    return out, compared


def fidelity(table: pd.DataFrame, exp: Experiment) -> dict:
    """stats.fidelity over the roadmap's rows (references and patched networks left out)."""
    path = [s for s in table["step"] if exp.groups.get(s) not in ("reference", "patched")]
    ours = {s: v for s, v in zip(table["step"], table["top1"]) if s in path and pd.notna(v)}
    rows = {s: exp.paper_rows.get(s) for s in path}
    return stats.fidelity(ours, {s: r["paper_top1"] for s, r in rows.items() if r},
                          {s: r["paper_top1_std"] for s, r in rows.items() if r}, exp.baselines)


def format_table(df: pd.DataFrame, compared: dict) -> pd.DataFrame:
    """The table for people: top-1 as mean ± std, Δ with its 95% interval, the verdict, blanks for what is not
    there."""
    return pd.DataFrame({
        "step": df["step"], "label": df["label"],
        "GFLOPs (224²)": df["gflops_224"].map(lambda v: f"{v:.2f}"),
        "params (M)": df["params_m"].map(lambda v: f"{v:.1f}"),
        "train img/s": df["train_img_s"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
        "top-1": [_pm(m, s) for m, s in zip(df["top1"], df["top1_std"])],
        "Δ top-1 [95% CI]": [_delta(compared.get(s)) for s in df["step"]],
        "verdict": df["verdict"].fillna(""),
        "seeds": df["seeds"],
        "paper top-1": df["paper_top1"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
        "paper GFLOPs": df["paper_gflops"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
        "status": [s if pd.isna(e) or not e else f"{s}: {e}" for s, e in zip(df["status"], df["error"])],
    })


def _pm(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def _delta(r: dict | None) -> str:
    if r is None or math.isnan(r["delta"]):
        return ""
    if math.isnan(r["ci_low"]):
        return f"{_signed(r['delta'])} ({r['ci_method']})"
    return f"{_signed(r['delta'])} [{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]"


def _signed(v: float) -> str:
    return f"{round(v, 1) + 0.0:+.1f}".replace("-", "−")  # + 0.0: −0.04 is +0.0, not −0.0


def not_levelled_off(exp: Experiment) -> str:
    """A line naming the finished runs whose top-1 had not levelled off (their last epochs' mean more than
    results.LEVEL_MARGIN points below their best: still climbing, or fallen back), or ""."""
    runs = [f"{r['name']} seed{r['seed']} ({r['summary']['last_epochs_below_best']:.1f})"
            for r in exp.cells if r["summary"].get("levelled_off") is False]
    if not runs:
        return ""
    return (f"! not levelled off (the mean top-1 of the last {results.LEVEL_EPOCHS} epochs more than "
            f"{results.LEVEL_MARGIN:g} points below the best): {', '.join(runs)}; their rows rank how fast the "
            f"networks learn, not what they reach: train longer (train.epochs)")


def _no_nan(d: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def write(experiment_dir: Path, quiet: bool = False):
    """Build the table once, with its statistics, and draw the figures from that same table, so that both say
    the same of every run; print the table, the lines under it (fidelity; runs not levelled off) and what was
    written unless `quiet`. Returns the table for people, the figures' paths and the lines under it."""
    exp = Experiment.load(experiment_dir)  # read once: everything below works from it
    table, compared = annotate(exp.table(), exp.top1_by_seed(), exp.baselines)
    pretty = format_table(table, compared)
    results.write_table(experiment_dir, table, pretty)
    fid = fidelity(table, exp)
    results.write_json(Path(experiment_dir) / "fidelity.json", _no_nan(fid))
    # every row's statistics in full: n, both p-values (t and exact sign-flip), the CI's method
    results.write_json(Path(experiment_dir) / "stats.json",
                       {name: {**_no_nan(r), "baseline": exp.baselines[name]} for name, r in compared.items()})
    paths = plots.plot_experiment(exp, table, fid)
    under = "\n".join(filter(None, [f"fidelity to the paper: {plots.fidelity_text(fid)} (fidelity.json)",
                                     not_levelled_off(exp)]))
    if not quiet:
        print(pretty.to_string(index=False))
        print(under)
        print(f"wrote {experiment_dir / 'table.csv'}, table.md, stats.json, fidelity.json, "
              + ", ".join(p.name for p in paths))
    return pretty, paths, under
