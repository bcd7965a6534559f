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


def test_sign_flip_cannot_go_below_two_over_two_to_the_n():
    assert sign_flip_p([0.3, 0.2, 0.4]) == 0.25
    assert sign_flip_p([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)
    assert sign_flip_p([1, -1]) == 1.0


def test_one_seed_has_no_interval():
    r = paired([80.0], [79.0])
    assert r["delta"] == 1.0 and math.isnan(r["ci_low"]) and math.isnan(r["p_t"])
    assert r["ci_method"] == "one seed: no interval"


def test_bca_bootstrap_from_ten_seeds():
    rng = np.random.default_rng(3)
    a, b = rng.normal(80, 1, 12), rng.normal(79, 1, 12)
    r = paired(a, b)
    expected = scipy_stats.bootstrap((a - b,), np.mean, method="BCa", n_resamples=9999,
                                     random_state=0).confidence_interval
    assert r["ci_method"] == "BCa bootstrap"
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert r["p_t"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)


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
    # every paper Δ is +1 and beyond √(s²+s²) (≤ 0.81): b agrees, c disagrees, d agrees
    assert f["signs_counted"] == ["b", "c", "d"] and f["signs_agree"] == ["b", "d"]
    assert f["sign_agreement"] == pytest.approx(2 / 3)
    std["c"] = 1.0  # now the paper's Δs of c and d are within √(1 + 0.01) of nothing
    assert fidelity(ours, paper, std, {"a": None, "b": "a", "c": "b", "d": "c"})["signs_counted"] == ["b"]


def test_equal_differences_on_every_seed_are_not_certainty():
    # 1 − 0.8 = 0.19999999999999996 and so on: no spread but float noise; a t-test would give p ≈ 1e-31
    r = paired([1.0, 2.0, 3.0], [0.8, 1.8, 2.8])
    assert r["ci_method"] == "no spread: sign-flip p" and r["p_t"] == r["p_sign_flip"] == 0.25
    out = compare({"a": {0: 0.8, 1: 1.8, 2: 2.8}, "b": {0: 1.0, 1: 2.0, 2: 3.0}}, {"a": None, "b": "a"})
    assert out["b"]["verdict"] == "within noise"
