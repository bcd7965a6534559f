"""The statistics against hand-computed cases; fidelity on a constructed table."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from convnext_roadmap.stats import compare, fidelity, holm, paired, sign_flip_p


def test_paired_three_seeds_by_hand():
    # d = (1.0, 0.5, 2.0): mean 7/6, sample sd √(7/12), t = 2.6458 on 2 degrees of freedom, where the t
    # distribution has the closed form F(t) = 1/2 + t / (2√(2 + t²)): F = 0.940959, p = 0.118082;
    # t₀.₉₇₅,₂ = 4.302653, half-width 4.302653 · √(7/12) / √3 = 1.897291
    r = paired([80.0, 81.0, 82.5], [79.0, 80.5, 80.5])
    assert r["n"] == 3 and r["delta"] == pytest.approx(7 / 6)
    assert r["p_t"] == pytest.approx(0.118082, abs=1e-6)
    assert r["resolvable"] == pytest.approx(1.897291, abs=1e-6)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((7 / 6 - 1.897291, 7 / 6 + 1.897291), abs=1e-6)
    assert r["ci_method"] == "paired t"
    # of the 8 sign patterns of (1, 0.5, 2) only +++ and --- reach |sum| ≥ 3.5
    assert r["p_sign_flip"] == 0.25


def test_resolvable_delta_at_holms_strictest_step():
    # the same d = (1.0, 0.5, 2.0) as one of 3 rows tested together: t at 1 − 0.05 / (2·3) on 2 degrees of
    # freedom, from F(t) = 1/2 + t / (2√(2 + t²)): with c = 2F − 1, t = c√2 / √(1 − c²) = 7.648804, and the
    # half-width 7.648804 · √(7/12) / √3 = 3.372806; the interval stays the 95% one
    r = paired([80.0, 81.0, 82.5], [79.0, 80.5, 80.5], family=3)
    assert r["resolvable"] == pytest.approx(3.372806, abs=1e-6)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((7 / 6 - 1.897291, 7 / 6 + 1.897291), abs=1e-6)


def test_a_delta_larger_than_resolvable_is_never_within_noise():
    # p ≤ α/m passes every step of Holm's: whatever the other rows, within noise means |Δ| < delta_resolvable
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(300):
        m, n = int(rng.integers(2, 8)), int(rng.integers(2, 6))
        top1 = {"r0": {k: 60 + rng.normal() for k in range(n)}}
        for i in range(1, m + 1):
            shift, spread = rng.normal(0, 4), rng.uniform(0.2, 3)
            top1[f"r{i}"] = {k: top1[f"r{i - 1}"][k] + shift + rng.normal(0, spread) for k in range(n)}
        out = compare(top1, {"r0": None, **{f"r{i}": f"r{i - 1}" for i in range(1, m + 1)}})
        for r in out.values():
            if abs(r["delta"]) > r["resolvable"]:
                seen += 1
                assert r["verdict"] in ("better", "worse")
    assert seen > 100  # the property was put to the test


def test_sign_flip_cannot_go_below_two_over_two_to_the_n():
    assert sign_flip_p([0.3, 0.2, 0.4]) == 0.25
    assert sign_flip_p([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)
    assert sign_flip_p([1, -1]) == 1.0
    assert sign_flip_p([1.0] * 20) == pytest.approx(2 / 2 ** 20)  # the largest it enumerates, a million patterns


def test_one_seed_has_no_interval():
    r = paired([80.0], [79.0])
    assert r["delta"] == 1.0 and math.isnan(r["ci_low"]) and math.isnan(r["p_t"])
    assert r["ci_method"] == "one seed: no interval"


def _bca_by_hand(d, alpha=0.05, resamples=40000, seed=1):
    """Efron's BCa interval of a mean, written out: bias correction z0 from the bootstrap means, acceleration from
    the jackknife, then the percentiles those shift to."""
    from statistics import NormalDist

    n, mean, z = len(d), d.mean(), NormalDist()
    means = np.random.default_rng(seed).choice(d, (resamples, n)).mean(1)
    z0 = z.inv_cdf(np.mean(means < mean))
    jack = np.array([np.delete(d, i).mean() for i in range(n)])
    u = jack.mean() - jack
    a = (u ** 3).sum() / (6 * ((u ** 2).sum()) ** 1.5)
    ends = [z.cdf(z0 + (z0 + q) / (1 - a * (z0 + q))) for q in (z.inv_cdf(alpha / 2), z.inv_cdf(1 - alpha / 2))]
    return np.quantile(means, ends)


def test_bca_bootstrap_from_ten_seeds():
    # skewed differences, so that BCa, the percentile interval and the t interval all differ
    d = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.6, 2.9, 4.8, 0.3])
    r = paired(80 + d, np.full(len(d), 80.0))
    low, high = _bca_by_hand(d)
    assert r["ci_method"] == "BCa bootstrap"
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high), abs=0.06)  # two Monte Carlo runs apart
    assert r["ci_high"] - d.mean() > 1.3 * (d.mean() - r["ci_low"])  # leans towards the long tail, as BCa does
    assert r["p_t"] == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    assert paired(80 + d[:9], np.full(9, 80.0))["ci_method"] == "paired t"  # below ten seeds


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 → 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_compare_gives_verdicts_against_each_baseline():
    top1 = {"a": {0: 70.0, 1: 71.0, 2: 72.0},
            "b": {0: 75.0, 1: 76.1, 2: 76.9},   # +5 on every seed: better
            "c": {0: 75.2, 1: 75.9, 2: 77.1},   # ≈ b
            "d": {0: 60.0}}                      # one seed
    out = compare(top1, {"a": None, "b": "a", "c": "b", "d": "c"})
    assert set(out) == {"b", "c", "d"}
    assert out["b"]["verdict"] == "better" and out["c"]["verdict"] == "within noise"
    assert out["d"]["verdict"] == "" and math.isnan(out["d"]["p_holm"])
    assert out["b"]["p_holm"] == pytest.approx(min(1, 2 * out["b"]["p_t"]))  # a family of two p-values


def test_fidelity_on_a_constructed_table():
    ours = {"a": 70.0, "b": 72.0, "c": 71.0, "d": 75.0}
    paper = {"a": 78.0, "b": 79.0, "c": 80.0, "d": 81.0}
    std = {"a": 0.1, "b": 0.1, "c": 0.8, "d": 0.1}
    f = fidelity(ours, paper, std, {"a": None, "b": "a", "c": "b", "d": "c"})
    # pairs: 5 concordant, 1 discordant (b, c) → τ = 4/6; ranks (1,3,2,4) vs (1,2,3,4): Σd² = 2 → ρ = 1 − 12/60
    assert f["kendall_tau"] == pytest.approx(4 / 6) and f["spearman_rho"] == pytest.approx(0.8)
    # every paper Δ is +1, beyond the std of a Δ of two 3-seed means, √((s² + s²) / 3) ≤ √(0.65 / 3) = 0.47:
    # b agrees, c disagrees, d agrees
    assert f["signs_counted"] == ["b", "c", "d"] and f["signs_agree"] == ["b", "d"]
    assert f["sign_agreement"] == pytest.approx(2 / 3)
    std["c"] = 1.8  # now the paper's Δs of c and d are within √((3.24 + 0.01) / 3) = 1.04 of nothing
    assert fidelity(ours, paper, std, {"a": None, "b": "a", "c": "b", "d": "c"})["signs_counted"] == ["b"]
    std["c"] = 1.6  # √((2.56 + 0.01) / 3) = 0.93: counted again (per run, √2.57 = 1.6 would not be)
    assert fidelity(ours, paper, std, {"a": None, "b": "a", "c": "b", "d": "c"})["signs_counted"] == ["b", "c", "d"]


def test_equal_differences_on_every_seed_are_not_certainty():
    # 1 − 0.8 = 0.19999999999999996 and so on: no spread but float noise; a t-test would give p ≈ 1e-31
    r = paired([1.0, 2.0, 3.0], [0.8, 1.8, 2.8])
    assert r["ci_method"] == "every seed alike: no interval" and r["p_t"] == r["p_sign_flip"] == 0.25
    assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) and math.isnan(r["resolvable"])
    out = compare({"a": {0: 0.8, 1: 1.8, 2: 2.8}, "b": {0: 1.0, 1: 2.0, 2: 3.0}}, {"a": None, "b": "a"})
    assert out["b"]["verdict"] == "within noise"


def test_levelled_off_by_hand():
    from convnext_roadmap.results import below_best

    assert below_best([10.0, 20.0, 30.0, 29.0, 28.0]) == pytest.approx(1.0)  # best 30, last three 29 on average
    assert below_best([10.0, 20.0, 30.0]) == pytest.approx(10.0)  # still climbing
    assert below_best([50.0, 60.0]) is None  # too few epochs to tell
