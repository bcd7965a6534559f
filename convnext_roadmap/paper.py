"""The paper's printed numbers (results/paper_reference.csv): one row per (base, run, recipe), and our FLOPs against
them."""

from __future__ import annotations

import functools
import math

from .resources import PAPER_CSV

FLOPS_TOLERANCE = 0.01  # the paper's own rounding
PAPER_RECIPE = "paper_in1k"  # the recipe of the paper's own runs: an experiment's rows are the paper's under it


@functools.cache
def table():
    """The paper's numbers as a DataFrame indexed by (base, step, recipe)."""
    import pandas as pd

    return pd.read_csv(PAPER_CSV, comment="#").set_index(["base", "step", "recipe"])


def row(base: str, name: str, recipe: str = PAPER_RECIPE) -> dict | None:
    """The paper's row for a run of a base's roadmap (a step, a sweep value, a reference model) trained with a
    recipe (the root of ours: the paper's own, or PyTorch's for the first bar of Figure 2), or None."""
    df = table()
    if (base, name, recipe) not in df.index:
        return None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in df.loc[(base, name, recipe)].items()}


def path(base: str, recipe: str = PAPER_RECIPE) -> list[tuple[str, float, float | None]]:
    """The paper's (step, top-1, std) along a base's path, in its table's order (the base first), as it prints them:
    the sweep's other values, the reference models and the rows with no top-1 (ConvNeXt V2's) left out."""
    df = table().reset_index()
    on_path = ((df["base"] == base) & (df["recipe"] == recipe) & ~df["step"].str.contains("@")
               & ~df["note"].fillna("").str.startswith("reference model") & df["paper_top1"].notna())
    return [(r.step, r.paper_top1, None if math.isnan(r.paper_top1_std) else r.paper_top1_std)
            for r in df[on_path].itertuples()]


def own_deltas(base: str) -> list[dict]:
    """The paper's own Δs along the base's path, each step against the one before, under Welch's t and Holm
    (stats.paper_steps): which of its steps its own numbers resolve."""
    from .stats import paper_steps

    return paper_steps(path(base))


def check_flops(gflops: float, ref: dict | None) -> dict:
    """Our GFLOPs against the paper's: the difference, and whether it is within rounding of what the paper says
    (or, for its known anomalies, of what it should have said)."""
    if ref is None:
        return {"diff": None, "check": "no paper number"}
    expected = ref["expected_gflops"] if ref["expected_gflops"] is not None else ref["paper_gflops"]
    ok = abs(gflops - expected) <= FLOPS_TOLERANCE + 1e-9
    check = "ok" if ok else f"OFF (expected {expected})"
    if ok and expected != ref["paper_gflops"]:
        check = f"ok; paper anomaly: the paper says {ref['paper_gflops']}"
    return {"diff": round(gflops - ref["paper_gflops"], 3) + 0.0, "check": check}  # + 0.0: no "-0"
