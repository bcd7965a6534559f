"""Is a step's difference real? The table analysed as the blocked experiment it is (networks × seeds), each row's
contrast with its baseline, its interval and p-value, Holm's correction across the family, a verdict; the paired
test where the blocked model does not fit; the paper's own Δs under the same test; how many seeds a Δ needs; and
how closely an experiment follows the paper's numbers.

Seeds are blocks: seed k of every network trains on the same data order and augmentations. A two-way model (top-1
on network and seed) takes the seed's share out and pools the noise of every row into one residual variance, on
(networks − 1)(seeds − 1) degrees of freedom instead of the seeds − 1 of one pair. Nothing here reads files.
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


GUARD_ALPHA = 0.05  # the guard's level: Bartlett's test on the residuals by row, and the Bonferroni outlier test


def blocked(top1: dict[str, dict[int, float]], baselines: dict[str, str | None], alpha: float = ALPHA) -> dict:
    """The family's cells (each row with a baseline, and the baselines) fitted as top-1 = network + seed + noise
    (statsmodels OLS, both factors categorical, a missing cell simply absent): per row the contrast with its
    baseline (`delta`, its standard error `se` from the fitted model), the t interval and two-sided p on the
    residual degrees of freedom, and `resolvable`, the Δ these seeds always resolve: the half-width at Holm's
    strictest level, alpha / rows. With no residual degrees of freedom (one seed), Δs without intervals.
    Returns {"rows": name → statistics, "family": the fit's networks, cells, residual df, pooled σ, and the guard:
    Bartlett's p on the residuals by network (`variances_p`) and the cells the outlier test flags}."""
    import statsmodels.api as sm

    rows = [r for r, b in baselines.items() if b is not None and r in top1 and b in top1]
    networks = sorted({*rows, *(baselines[r] for r in rows)}, key=lambda n: list(top1).index(n))
    cells = [(n, seed, top1[n][seed]) for n in networks for seed in sorted(top1[n])]
    seeds = sorted({seed for _, seed, _ in cells})
    family = {"networks": networks, "cells": len(cells), "residual_df": 0, "sigma": math.nan,
              "variances_p": math.nan, "outliers": []}
    out = {r: {"n": len(set(top1[r]) & set(top1[baselines[r]])), "delta": math.nan, "se": math.nan,
               "ci_low": math.nan, "ci_high": math.nan, "p_t": math.nan, "resolvable": math.nan,
               "residual_df": 0, "ci_method": ""} for r in rows}
    if not rows:
        return {"rows": out, "family": family}
    # the design by hand: an intercept, a dummy per network but the first, a dummy per seed but the first
    col = {n: i for i, n in enumerate(networks[1:], start=1)}
    X = np.zeros((len(cells), len(networks) + len(seeds) - 1))
    X[:, 0] = 1
    for i, (n, seed, _) in enumerate(cells):
        if n in col:
            X[i, col[n]] = 1
        if seed != seeds[0]:
            X[i, len(networks) - 1 + seeds.index(seed)] = 1
    y = np.array([v for *_, v in cells])
    with warnings.catch_warnings():  # a network with no seed in common with the rest: rank-deficient, said below
        warnings.simplefilter("ignore")
        fit = sm.OLS(y, X).fit()
    df = int(round(fit.df_resid))
    family["residual_df"] = df
    estimable = np.linalg.pinv(X) @ X  # a contrast c is estimable where c @ this is c
    for r in rows:
        contrast = np.zeros(X.shape[1])
        for name, sign in ((r, 1.0), (baselines[r], -1.0)):
            if name in col:
                contrast[col[name]] += sign
        if not np.allclose(contrast @ estimable, contrast, atol=1e-8):
            out[r]["ci_method"] = "no seed in common with the family"  # compare takes its paired seeds
            continue
        out[r].update(delta=float(contrast @ fit.params), residual_df=df)
        if df < 1:
            out[r]["ci_method"] = "one seed: no interval"
            continue
        test = fit.t_test(contrast)
        se = float(np.squeeze(test.sd))
        low, high = np.squeeze(test.conf_int(alpha))
        out[r].update(se=se, ci_low=float(low), ci_high=float(high), p_t=float(np.squeeze(test.pvalue)),
                      resolvable=float(st.t.ppf(1 - alpha / (2 * len(rows)), df) * se), ci_method="blocked t")
    if df < 1:
        return {"rows": out, "family": family}
    family["sigma"] = float(math.sqrt(max(fit.scale, 0.0)))
    if family["sigma"] <= 1e-9 * max(1.0, float(np.abs(y).max())):
        return {"rows": out, "family": family}  # no spread but float noise: compare falls back (`alike`)
    residuals = {n: [e for (m, *_), e in zip(cells, fit.resid) if m == n] for n in networks}
    groups = [g for g in residuals.values() if len(g) > 1]
    with warnings.catch_warnings():  # a row of one seed has no residual of its own (leverage 1): no test there
        warnings.simplefilter("ignore")
        if len(groups) > 1:  # Bartlett's: Brown–Forsythe's has no power on 3 residuals a row (docs/statistics.md)
            p = st.bartlett(*groups).pvalue
            family["variances_p"] = float(p) if np.isfinite(p) else math.nan
        if df >= 3:  # an externally studentized residual needs a few degrees of freedom left without its cell
            bonferroni = fit.outlier_test(method="bonf")[:, 2]
            family["outliers"] = [{"network": cells[i][0], "seed": cells[i][1]}
                                  for i in np.flatnonzero(np.nan_to_num(bonferroni, nan=1.0) < GUARD_ALPHA)]
    return {"rows": out, "family": family}


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
    """Every row against its baseline (the row before it on the path; the full path for leave-one-out): the blocked
    analysis of the family, or, for the rows the guard picks, the paired test of their own seeds; Holm across the
    family either way. A row with fewer than two seeds in common with its baseline gets its paired Δ and no test:
    nothing could check its one run. Returns {"rows": name → the statistics of the analysis it gets, with
    `analysis` (blocked / paired), `p_holm`, `verdict`, and both analyses in full under "blocked" and "paired";
    "family": the blocked fit (`blocked`'s); "notes": a line per row or rows that fell back, saying why}."""
    fitted = blocked(top1, baselines, alpha)
    rows, family = fitted["rows"], fitted["family"]
    shared = {r: sorted(set(top1[r]) & set(top1[baselines[r]])) for r in rows}
    m = max(sum(len(shared[r]) > 1 for r in rows), 1)
    pairs = {r: paired([top1[r][s] for s in shared[r]], [top1[baselines[r]][s] for s in shared[r]], alpha, m)
             for r in rows}
    fallback, notes = {r for r in rows if len(shared[r]) < 2 or rows[r]["ci_method"].startswith("no seed")}, []
    alike = family["residual_df"] > 0 and family["sigma"] <= 1e-9 * max(
        1.0, max(abs(v) for n in family["networks"] for v in top1[n].values()))
    if alike:  # every row moved by the same amount on every seed: a t-test would call anything certain
        fallback = set(rows)
        notes.append("every row moved by the same amount on every seed (no residual spread): each Δ is from its "
                     "own paired seeds, by the exact sign-flip test")
    else:
        if family["outliers"]:  # first the far-off runs, which would also make the variances look unequal
            far = {c["network"] for c in family["outliers"]}
            for network in sorted(far):
                hit = [r for r in rows if network in (r, baselines[r])]
                fallback |= set(hit)
                seeds = ", ".join(f"seed{c['seed']}" for c in family["outliers"] if c["network"] == network)
                notes.append(f"{network} {seeds} far off its row (Bonferroni outlier test, p < {GUARD_ALPHA:g}): "
                             f"{', '.join(hit)} from their own paired seeds")
            # the rows left keep the blocked fit, without the far-off networks' runs, whose noise is not theirs
            rest = {r: b for r, b in baselines.items() if r in rows and r not in fallback}
            refit = blocked({n: v for n, v in top1.items() if n not in far}, rest, alpha)
            rows = {**rows, **refit["rows"]}
            family = {**family, "sigma_without_outliers": refit["family"]["sigma"],
                      "residual_df_without_outliers": refit["family"]["residual_df"],
                      "variances_p": refit["family"]["variances_p"]}
        if family["variances_p"] < GUARD_ALPHA:
            fallback = set(rows)
            notes.append(f"the rows' residual variances differ beyond chance (Bartlett's p = "
                         f"{family['variances_p']:.3f}): every Δ is from its own paired seeds")
    out = {}
    for r in rows:
        chosen = pairs[r] if r in fallback else rows[r]
        out[r] = {**chosen, "analysis": "paired" if r in fallback else "blocked",
                  "residual_df": max(pairs[r]["n"] - 1, 0) if r in fallback else rows[r]["residual_df"],
                  "blocked": rows[r], "paired": pairs[r]}
    adjusted = holm([r["p_t"] for r in out.values()])
    for r, p in zip(out.values(), adjusted):
        r["p_holm"] = p
        r["verdict"] = verdict(r["delta"], p, alpha)
    return {"rows": out, "family": family, "notes": notes}


def power(seeds: int, networks: int, sigma: float, delta: float, alpha: float = ALPHA) -> float:
    """The chance that the blocked analysis of `networks` networks × `seeds` seeds calls a true Δ of `delta`
    beyond noise, each of the networks − 1 comparisons at Holm's strictest level alpha / (networks − 1), two-sided,
    on (networks − 1)(seeds − 1) residual degrees of freedom: the noncentral t's mass beyond ±t_crit."""
    df = (networks - 1) * (seeds - 1)
    if df < 1 or sigma <= 0:
        return math.nan
    se = sigma * math.sqrt(2 / seeds)
    crit = st.t.ppf(1 - alpha / (2 * max(networks - 1, 1)), df)
    return float(st.nct.sf(crit, df, delta / se) + st.nct.cdf(-crit, df, delta / se))


def seeds_needed(delta: float, sigma: float, networks: int, target: float = 0.8, alpha: float = ALPHA,
                 most: int = 100_000) -> int | None:
    """The fewest seeds per network at which `power` reaches `target` (None beyond `most`)."""
    if delta <= 0 or sigma <= 0 or networks < 2:
        return None
    if not all(math.isfinite(v) for v in (delta, sigma)):
        return None
    lo, hi = 2, 2
    while not power(hi, networks, sigma, delta, alpha) >= target:  # a NaN power has not reached it
        if hi >= most:
            return None
        lo, hi = hi, min(hi * 2, most)
    while lo < hi:  # power rises with the seeds: the first that reaches the target
        mid = (lo + hi) // 2
        if power(mid, networks, sigma, delta, alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return hi


PAPER_SEEDS = 3  # Table 10: "mean and std over 3 runs"


def paper_steps(path: list[tuple[str, float, float | None]], seeds: int = PAPER_SEEDS,
                alpha: float = ALPHA) -> list[dict]:
    """The paper's own Δs under the same test: each step of a path (name, printed mean, printed std of `seeds`
    runs, in path order) against the step before it, unpaired, by Welch's t from the printed numbers
    (scipy.stats.ttest_ind_from_stats), Holm over the path's tested steps. A step without a printed std (its own
    or the one before; Table 11's path has none) is not tested, and says so."""
    out = []
    for (name, mean, std), (before, base_mean, base_std) in zip(path[1:], path):
        row = {"step": name, "baseline": before, "delta": mean - base_mean, "p": math.nan}
        if std is not None and base_std is not None and not (_nan(std) or _nan(base_std)):
            row["p"] = float(st.ttest_ind_from_stats(mean, std, seeds, base_mean, base_std, seeds,
                                                     equal_var=False).pvalue)
        out.append(row)
    for row, p in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = p
        row["verdict"] = verdict(row["delta"], p, alpha) or "not tested: no std printed"
    return out


def fidelity(ours: dict[str, float], paper: dict[str, float], baselines: dict[str, str | None],
             paper_verdicts: dict[tuple[str, str], str]) -> dict:
    """How closely our per-row top-1 follows the paper's, over the rows both have: Kendall's τ and Spearman's ρ of
    the accuracies, and the share of Δs (row against its baseline) whose sign agrees with the paper's, counting
    only the paper's Δs that its own test calls beyond noise (`paper_verdicts`: (step, the step before) → the
    verdict of `paper_steps`)."""
    rows = [r for r in ours if r in paper and not _nan(ours[r]) and not _nan(paper[r])]
    out = {"rows": rows, "kendall_tau": math.nan, "spearman_rho": math.nan, "sign_agreement": math.nan,
           "signs_counted": [], "signs_agree": [],
           "signs_counted_are": "the paper's Δs beyond noise by Welch's t on its printed means and stds (3 runs), "
                                "Holm over its path (roadmap paper)"}
    if len(rows) >= 2:
        x, y = [ours[r] for r in rows], [paper[r] for r in rows]
        with warnings.catch_warnings():  # a constant column has no rank correlation: NaN, as scipy says
            warnings.simplefilter("ignore", st.ConstantInputWarning)
            out["kendall_tau"] = float(st.kendalltau(x, y).statistic)
            out["spearman_rho"] = float(st.spearmanr(x, y).statistic)
    for r in rows:
        b = baselines.get(r)
        if b in rows and paper_verdicts.get((r, b)) in ("better", "worse"):
            out["signs_counted"].append(r)
            if np.sign(ours[r] - ours[b]) == np.sign(paper[r] - paper[b]):
                out["signs_agree"].append(r)
    if out["signs_counted"]:
        out["sign_agreement"] = len(out["signs_agree"]) / len(out["signs_counted"])
    return out


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
