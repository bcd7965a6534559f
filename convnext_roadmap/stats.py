"""Is a step's difference real? Paired Δ across seeds with its interval and p-values, Holm's correction across the
table, a verdict; and how closely an experiment follows the paper's numbers.

Seeds are paired: seed k of every network trains on the same data order and augmentations, so the Δ of seed k is
a fair comparison and the spread of the Δs (not of the accuracies) measures the noise. Nothing here reads files.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as st

ALPHA = 0.05
BOOTSTRAP_FROM = 10  # seeds from which the CI is a BCa bootstrap instead of the paired t interval


def mean_half_width(std: float, n: int, alpha: float = ALPHA) -> float:
    """Half the t interval of a mean of n values with sample std `std` (n − 1 degrees of freedom)."""
    return float(st.t.ppf(1 - alpha / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan


def sign_flip_p(d) -> float:
    """The exact two-sided sign-flip permutation p-value of a mean paired difference: the share of the 2ⁿ sign
    patterns whose |mean| is at least the observed one. (3 pairs can never go below 2/8 = 0.25.)"""
    d = np.asarray(d, dtype=float)
    if len(d) > 20:
        raise ValueError("the exact sign-flip test enumerates 2^n patterns; use at most 20 pairs")
    sums = np.zeros(1)
    for x in d:  # the sums of all 2^k sign patterns of the first k differences (2^20 floats at most: 8 MB)
        sums = np.concatenate([sums + x, sums - x])
    return float(np.mean(np.abs(sums) >= abs(d.sum()) - 1e-12 * len(d)))


def paired(a, b, alpha: float = ALPHA, family: int = 1) -> dict:
    """Row a against row b, seed by seed: the mean Δ, its CI, the paired t-test and exact sign-flip p-values, and how
    large a Δ these seeds always resolve among `family` rows tested together, the paired t half-width at alpha /
    family: a mean Δ larger than this has p < alpha / family, which passes every step of Holm's correction, so it is
    always called better or worse (one row: the paired t interval's half-width). With one pair there is a Δ but no
    interval and no test."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    out = {"n": n, "delta": float(d.mean()) if n else math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "p_t": math.nan, "p_sign_flip": math.nan, "resolvable": math.nan, "ci_method": ""}
    if n < 2:
        out["ci_method"] = "one seed: no interval" if n == 1 else "no paired seeds"
        return out
    sd = d.std(ddof=1)
    half = mean_half_width(sd, n, alpha)
    out.update(resolvable=mean_half_width(sd, n, alpha / family),
               p_sign_flip=sign_flip_p(d) if n <= 20 else math.nan)
    if sd <= 1e-9 * max(1.0, abs(d.mean())):
        # every seed moved by the same amount (top-1 on a small set moves in steps): no spread to measure noise by,
        # so no interval and no resolvable Δ; the t-test would call anything certain, so the exact sign-flip test
        # speaks for these seeds
        out.update(p_t=out["p_sign_flip"], resolvable=math.nan, ci_method="every seed alike: no interval")
        return out
    out["p_t"] = float(st.ttest_1samp(d, 0.0).pvalue)
    if n >= BOOTSTRAP_FROM:
        ci = st.bootstrap((d,), np.mean, confidence_level=1 - alpha, method="BCa", n_resamples=9999,
                          rng=np.random.default_rng(0)).confidence_interval
        if not (math.isnan(ci.low) or math.isnan(ci.high)):
            out.update(ci_low=float(ci.low), ci_high=float(ci.high), ci_method="BCa bootstrap")
            return out
    out.update(ci_low=float(d.mean() - half), ci_high=float(d.mean() + half), ci_method="paired t")
    return out


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaNs are left out of the family and stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    idx = [i for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
    m, out, running = len(idx), np.full(len(p), math.nan), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def verdict(delta: float, p_holm: float, alpha: float = ALPHA) -> str:
    if math.isnan(p_holm):
        return ""
    if p_holm < alpha:
        return "better" if delta > 0 else "worse"
    return "within noise"


def compare(top1: dict[str, dict[int, float]], baselines: dict[str, str | None], alpha: float = ALPHA) -> dict:
    """Every row against its baseline (the row before it on the path; the full path for leave-one-out), over the
    seeds both finished: name → `paired` statistics with `p_holm` (Holm across the rows) and `verdict`."""
    seeds = {name: sorted(set(top1[name]) & set(top1[base])) for name, base in baselines.items()
             if base is not None and base in top1 and name in top1}
    tested = sum(len(s) > 1 for s in seeds.values())  # the rows with a p-value: Holm's family
    out = {name: paired([top1[name][s] for s in seeds[name]], [top1[baselines[name]][s] for s in seeds[name]],
                        alpha, max(tested, 1))
           for name in seeds}
    adjusted = holm([r["p_t"] for r in out.values()])
    for r, p in zip(out.values(), adjusted):
        r["p_holm"] = p
        r["verdict"] = verdict(r["delta"], p, alpha)
    return out


def fidelity(ours: dict[str, float], paper: dict[str, float], paper_std: dict[str, float | None],
             baselines: dict[str, str | None], paper_seeds: int = 3) -> dict:
    """How closely our per-row top-1 follows the paper's, over the rows both have: Kendall's τ and Spearman's ρ of
    the accuracies, and the share of Δs (row against its baseline) whose sign agrees with the paper's, counting
    only the paper's Δs larger than their own std. The paper's rows are means of `paper_seeds` runs (Table 10:
    3) with the runs' std s, so a Δ of two rows has std √((s_row² + s_base²) / paper_seeds); every Δ counts where
    the paper gives no std."""
    rows = [r for r in ours if r in paper and not _nan(ours[r]) and not _nan(paper[r])]
    out = {"rows": rows, "kendall_tau": math.nan, "spearman_rho": math.nan, "sign_agreement": math.nan,
           "signs_counted": [], "signs_agree": []}
    if len(rows) >= 2:
        x, y = [ours[r] for r in rows], [paper[r] for r in rows]
        with warnings.catch_warnings():  # a constant column has no rank correlation: NaN, as scipy says
            warnings.simplefilter("ignore", st.ConstantInputWarning)
            out["kendall_tau"] = float(st.kendalltau(x, y).statistic)
            out["spearman_rho"] = float(st.spearmanr(x, y).statistic)
    for r in rows:
        b = baselines.get(r)
        if b not in rows:
            continue
        paper_delta = paper[r] - paper[b]
        s = [paper_std.get(r), paper_std.get(b)]
        noise = math.sqrt(sum(v * v for v in s) / paper_seeds) if all(v is not None and not _nan(v) for v in s) \
            else 0.0
        if abs(paper_delta) > noise:
            out["signs_counted"].append(r)
            if np.sign(ours[r] - ours[b]) == np.sign(paper_delta):
                out["signs_agree"].append(r)
    if out["signs_counted"]:
        out["sign_agreement"] = len(out["signs_agree"]) / len(out["signs_counted"])
    return out


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
