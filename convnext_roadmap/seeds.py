"""`roadmap seeds`: how many seeds per network a Δ needs (the blocked analysis at 80% power), and what they cost,
from an experiment's pooled σ and run times, or from a σ given."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd

from . import paper, stats
from .errors import RoadmapError
from .experiment import Experiment


def table(experiment_dir: Path | None, delta: float | None = None, sigma: float | None = None,
          networks: int | None = None, *, base: str) -> tuple[str, pd.DataFrame]:
    """How many seeds per network the blocked analysis needs to resolve a Δ with 80% power (stats.seeds_needed),
    from an experiment's pooled σ and networks (or those given), for `delta`, else for 1 point, the experiment's
    Δs and the paper's (on the experiment's base's path, or `base`'s without an experiment); with an experiment,
    what those seeds would cost at its runs' measured wall time. Returns the line that says where σ came from, and
    the table."""
    deltas: list[tuple[str, float]] = []
    cost = None
    if experiment_dir is not None:
        exp = Experiment.load(experiment_dir)
        compared = stats.compare(exp.top1_by_seed(), exp.baselines)
        f = compared["family"]
        if sigma is None and math.isnan(f["sigma"]):
            raise RoadmapError(f"{experiment_dir.name}: no pooled σ (fewer than two seeds of a family finished); "
                               f"give --sigma S")
        where = ("given" if sigma is not None else
                 f"pooled: {experiment_dir.name}, {len(f['networks'])} networks, {f['cells']} runs, "
                 f"{f['residual_df']} residual df" + ("; the guard rejected pooling: " + "; ".join(compared["notes"])
                                                       if compared["notes"] else ""))
        sigma = f["sigma"] if sigma is None else sigma
        networks = networks or len(f["networks"])
        head = f"# σ {sigma:.2f} ({where}); {networks} networks"
        deltas += [(name, r["delta"]) for name, r in compared["rows"].items() if not math.isnan(r["delta"])]
        cost = _run_cost(exp)
    else:
        head = f"# σ {sigma:.2f} (given); {networks} networks"
    if networks < 2:
        raise RoadmapError(f"--rows {networks}: a family needs two networks or more")
    head += "; 80% power, each of the networks − 1 comparisons at Holm's strictest level, two-sided"
    if delta is not None:
        deltas = [("--delta", delta)]
    else:
        deltas = [("1 point", 1.0), *deltas]
        if experiment_dir is None or exp.plan.get("paper_recipe", paper.PAPER_RECIPE) == paper.PAPER_RECIPE:
            deltas += [(f"paper: {r['step']}", r["delta"])
                       for r in paper.own_deltas(exp.plan["base"] if experiment_dir else base)]
    rows = []
    for what, d in deltas:
        need = stats.seeds_needed(abs(d), sigma, networks)
        row = {"Δ (points)": f"{abs(d):.2f}", "for": what, "seeds per network": need or "> 100,000"}
        if cost is not None and not math.isnan(cost[0]):
            hours, unit = cost
            row[f"cost ({unit})"] = f"{need * networks * hours:,.1f}" if need else ""
        rows.append(row)
    return head, pd.DataFrame(rows)


def _run_cost(exp: Experiment) -> tuple[float, str]:
    """The mean cost of one run of the experiment, in GPU-hours (wall time × GPUs) or CPU-hours (wall time × CPU
    threads × processes), as its summaries measured it."""
    done = [c["summary"] for c in exp.cells if c["status"] == "completed" and c["summary"].get("wall_s")]
    if not done:
        return math.nan, "hours"
    gpu = any(str(s.get("hardware", {}).get("device", "")).startswith("cuda") for s in done)
    per = [s["wall_s"] / 3600 * s.get("processes", 1) * (1 if gpu else s.get("hardware", {}).get("torch_threads", 1))
           for s in done]
    return statistics.mean(per), "GPU-hours" if gpu else "CPU-hours"
