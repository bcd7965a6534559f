"""An experiment's report: its table with every row's Δ under the blocked analysis (stats.compare), the lines under
it, its fidelity to the paper, written as table.csv, table.md, stats.json and fidelity.json, and its figures drawn
from that same table."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd

from . import paper, plots, results, stats
from .experiment import Experiment


def annotate(table: pd.DataFrame, top1: dict[str, dict[int, float]],
             baselines: dict[str, str | None]) -> tuple[pd.DataFrame, dict]:
    """The table with each row's Δ against its baseline (stats.compare: the blocked analysis, or the paired test
    where the guard says so), after top1_std; and stats.compare's result."""
    compared = stats.compare(top1, baselines)
    columns = {"delta_top1": "delta", "delta_ci_low": "ci_low", "delta_ci_high": "ci_high", "delta_p": "p_t",
               "delta_p_holm": "p_holm", "delta_resolvable": "resolvable", "verdict": "verdict",
               "analysis": "analysis", "residual_df": "residual_df"}
    out = table.copy()
    at = out.columns.get_loc("top1_std") + 1
    for i, (column, key) in enumerate(columns.items()):
        out.insert(at + i, column, [compared["rows"].get(s, {}).get(key) for s in out["step"]])
    out["residual_df"] = out["residual_df"].astype("Int64")  # a count, blank where no row is compared
    return out, compared


def fidelity(table: pd.DataFrame, exp: Experiment, paper_steps: list[dict]) -> dict:
    """stats.fidelity over the roadmap's rows (references and patched networks left out)."""
    path = [s for s in table["step"] if exp.groups.get(s) not in ("reference", "patched")]
    ours = {s: v for s, v in zip(table["step"], table["top1"]) if s in path and pd.notna(v)}
    rows = {s: exp.paper_rows.get(s) for s in path}
    return stats.fidelity(ours, {s: r["paper_top1"] for s, r in rows.items() if r}, exp.baselines,
                          {(r["step"], r["baseline"]): r["verdict"] for r in paper_steps})


def format_table(df: pd.DataFrame, compared: dict) -> pd.DataFrame:
    """The table for people: top-1 as mean ± std, Δ with its 95% interval, the verdict, blanks for what is not
    there."""
    return pd.DataFrame({
        "step": df["step"], "label": df["label"],
        "GFLOPs (224²)": df["gflops_224"].map(lambda v: f"{v:.2f}"),
        "params (M)": df["params_m"].map(lambda v: f"{v:.1f}"),
        "train img/s": df["train_img_s"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
        "top-1": [_pm(m, s) for m, s in zip(df["top1"], df["top1_std"])],
        "Δ top-1 [95% CI]": [_delta(compared["rows"].get(s)) for s in df["step"]],
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


def resolution_line(compared: dict, delta: float = 1.0) -> str:
    """What the family's seeds resolve, from the blocked fit's pooled σ, and the seeds a `delta`-point Δ needs
    (80% power at Holm's strictest level; `roadmap seeds` says more), or ""."""
    f = compared["family"]
    rows = [r for r in compared["rows"].values() if r["analysis"] == "blocked" and not math.isnan(r["resolvable"])]
    if math.isnan(f["sigma"]) or not rows:
        return ""
    seeds = round(statistics.median(r["n"] for r in rows))
    resolvable = statistics.median(r["blocked"]["resolvable"] for r in rows)
    sigma, df = f.get("sigma_without_outliers", f["sigma"]), f.get("residual_df_without_outliers", f["residual_df"])
    need = stats.seeds_needed(delta, sigma, len(f["networks"]))
    return (f"resolution: {seeds} seeds of {len(f['networks'])} networks resolve Δs of {resolvable:.1f} points "
            f"(pooled σ {sigma:.2f} on {df} df, Holm's strictest level); a {delta:g}-point Δ "
            f"would need {need if need else 'more than 100,000'} seeds per network for 80% power (roadmap seeds)")


def _no_nan(d: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def write(experiment_dir: Path, quiet: bool = False):
    """Build the table once, with its statistics, and draw the figures from that same table, so that both say
    the same of every run; print the table, the lines under it (fidelity; runs not levelled off) and what was
    written unless `quiet`. Returns the table for people, the figures' paths and the lines under it."""
    exp = Experiment.load(experiment_dir)  # read once: everything below works from it
    table, compared = annotate(exp.table(), exp.top1_by_seed(), exp.baselines)
    under_paper_recipe = exp.plan.get("paper_recipe", paper.PAPER_RECIPE) == paper.PAPER_RECIPE
    steps = paper.own_deltas(exp.plan["base"]) if under_paper_recipe else []
    paper_verdict = {r["step"]: r["verdict"] for r in steps}
    table["paper_verdict"] = [paper_verdict.get(s) if exp.paper_rows.get(s) and exp.baselines.get(s) ==
                              next((r["baseline"] for r in steps if r["step"] == s), None) else None
                              for s in table["step"]]
    pretty = format_table(table, compared)
    results.write_table(experiment_dir, table, pretty)
    fid = fidelity(table, exp, steps)
    results.write_json(Path(experiment_dir) / "fidelity.json", _no_nan(fid))
    # every row's statistics in full, both analyses (the blocked fit, the paired seeds), and the fit itself
    results.write_json(Path(experiment_dir) / "stats.json", {
        "rows": {name: {**_no_nan(r), "blocked": _no_nan(r["blocked"]), "paired": _no_nan(r["paired"]),
                        "baseline": exp.baselines[name]} for name, r in compared["rows"].items()},
        "family": _no_nan(compared["family"]), "notes": compared["notes"]})
    paths = plots.plot_experiment(exp, table, fid)
    under = "\n".join(filter(None, [*(f"! {note}" for note in compared["notes"]), resolution_line(compared),
                                     f"fidelity to the paper: {plots.fidelity_text(fid)} (fidelity.json)",
                                     not_levelled_off(exp)]))
    if not quiet:
        print(pretty.to_string(index=False))
        print(under)
        print(f"wrote {experiment_dir / 'table.csv'}, table.md, stats.json, fidelity.json, "
              + ", ".join(p.name for p in paths))
    return pretty, paths, under
