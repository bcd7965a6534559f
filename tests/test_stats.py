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
        out = compare(top1, {"r0": None, **{f"r{i}": f"r{i - 1}" for i in range(1, m + 1)}})["rows"]
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
    out = compare(top1, {"a": None, "b": "a", "c": "b", "d": "c"})["rows"]
    assert set(out) == {"b", "c", "d"}
    assert out["b"]["verdict"] == "better" and out["c"]["verdict"] == "within noise"
    # d has one seed: nothing could check its one run (in the blocked fit its residual is 0), so it has its
    # paired Δ and no test, as with the paired test alone
    assert out["b"]["analysis"] == "blocked" and out["b"]["residual_df"] == 4  # 10 cells − 4 networks − 3 seeds + 1
    assert out["d"]["analysis"] == "paired" and out["d"]["delta"] == pytest.approx(60.0 - 75.2)
    assert out["d"]["ci_method"] == "one seed: no interval"


# A networks × seeds table worked out by hand (the oracle of the blocked analysis):
#   a: 70 72 71 (mean 71)   b: 73 74 75 (mean 74)   c: 72 76 74 (mean 74)   grand mean 73
#   seed means 71⅔, 74, 73⅓; residual e = y − row mean − seed mean + grand mean:
#   a: ⅓ 0 −⅓   b: ⅓ −1 ⅔   c: −⅔ 1 −⅓     SSE = (1 + 0 + 1 + 1 + 9 + 4 + 4 + 9 + 1) / 9 = 10/3
#   residual df (3 − 1)(3 − 1) = 4, MSE = 10/12, σ = 0.912871; SE of a Δ of two rows √(2 · MSE / 3) = 0.745356
HAND = {"a": {0: 70.0, 1: 72.0, 2: 71.0}, "b": {0: 73.0, 1: 74.0, 2: 75.0}, "c": {0: 72.0, 1: 76.0, 2: 74.0}}
CHAIN = {"a": None, "b": "a", "c": "b"}


def test_the_blocked_analysis_by_hand():
    out = compare(HAND, CHAIN)
    rows, family = out["rows"], out["family"]
    assert family["residual_df"] == 4 and family["sigma"] == pytest.approx((10 / 12) ** 0.5)
    b, c = rows["b"], rows["c"]
    se = (2 * (10 / 12) / 3) ** 0.5
    assert b["delta"] == pytest.approx(3.0) and b["se"] == pytest.approx(se) and b["residual_df"] == 4
    t = 3.0 / se  # 4.024922
    assert b["p_t"] == pytest.approx(2 * scipy_stats.t.sf(t, 4))  # 0.015826
    half = scipy_stats.t.ppf(0.975, 4) * se  # 2.776445 · 0.745356
    assert (b["ci_low"], b["ci_high"]) == pytest.approx((3 - half, 3 + half))
    assert c["delta"] == pytest.approx(0.0, abs=1e-12) and c["p_t"] == pytest.approx(1.0)
    # Holm over two: 2 · 0.015826, then max(that, 1 · 1.0); resolvable at 0.05 / 2 on 4 df
    assert b["p_holm"] == pytest.approx(2 * b["p_t"]) and c["p_holm"] == pytest.approx(1.0)
    assert b["resolvable"] == pytest.approx(scipy_stats.t.ppf(1 - 0.05 / 4, 4) * se)
    assert (b["verdict"], c["verdict"]) == ("better", "within noise") and b["analysis"] == "blocked"
    # the paired test alone of b against a: d = (3, 2, 4), t = 3 / (1 / √3) = 5.196 on 2 df: kept beside
    assert b["paired"]["p_t"] == pytest.approx(scipy_stats.ttest_rel([73, 74, 75], [70, 72, 71]).pvalue)


def test_two_rows_are_the_paired_t_test():
    top1 = {"a": {0: 61.2, 1: 58.9, 2: 63.0, 3: 60.1}, "b": {0: 62.0, 1: 60.4, 2: 63.1, 3: 62.5}}
    b = compare(top1, {"a": None, "b": "a"})["rows"]["b"]
    expected = scipy_stats.ttest_rel([62.0, 60.4, 63.1, 62.5], [61.2, 58.9, 63.0, 60.1])
    assert b["p_t"] == pytest.approx(expected.pvalue, rel=1e-10) and b["residual_df"] == 3
    low, high = expected.confidence_interval(0.95)
    assert (b["ci_low"], b["ci_high"]) == pytest.approx((low, high), rel=1e-10)


def test_a_missing_seed_by_yates_missing_value():
    # the hand table without c's seed 2. The least-squares fit of an incomplete block design is the complete one
    # with Yates' missing value in the hole: ŷ = (t·T + b·B − G) / ((t − 1)(b − 1)) with t = 3 networks,
    # b = 3 seeds, T = c's total 148, B = seed 2's total 146, G = 583: ŷ = (444 + 438 − 583) / 4 = 74.75.
    # Then c's mean is 74.25 (Δ against b: 0.25), the residual df one fewer (3), and the variance of a Δ with
    # the incomplete row σ²(2/b + t / (b (b − 1)(t − 1))) = σ²(2/3 + 1/4)
    import numpy as np

    top1 = {k: dict(v) for k, v in HAND.items()}
    del top1["c"][2]
    y = np.array([[70, 72, 71], [73, 74, 75], [72, 76, 74.75]])
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    mse = (resid ** 2).sum() / 3
    rows = compare(top1, CHAIN)["rows"]
    c, b = rows["c"], rows["b"]
    assert c["delta"] == pytest.approx(0.25) and c["residual_df"] == 3
    assert c["se"] == pytest.approx((mse * (2 / 3 + 1 / 4)) ** 0.5)
    assert b["delta"] == pytest.approx(3.0) and b["se"] == pytest.approx((2 * mse / 3) ** 0.5)


def test_the_guard_falls_back_to_paired_seeds_for_a_wild_row():
    # five networks of four seeds, all within ±0.1 of their means, but one whose seeds scatter by ±4: its
    # residuals are far wider than the others' (Bartlett's test), so no row's interval leans on the pooled σ
    rng = np.random.default_rng(1)
    quiet = {f"n{i}": {k: 60 + i + rng.uniform(-0.1, 0.1) for k in range(4)} for i in range(5)}
    wild = dict(quiet, n2={k: 62 + v for k, v in zip(range(4), (4.0, -3.5, 3.8, -4.2))})
    chain = {"n0": None, **{f"n{i}": f"n{i - 1}" for i in range(1, 5)}}
    calm = compare(quiet, chain)
    assert calm["notes"] == [] and {r["analysis"] for r in calm["rows"].values()} == {"blocked"}
    out = compare(wild, chain)
    assert out["family"]["variances_p"] < 0.05
    assert {r["analysis"] for r in out["rows"].values()} == {"paired"}
    assert out["notes"][0].startswith("the rows' residual variances differ beyond chance")
    r = out["rows"]["n4"]  # its own paired seeds, as the paired test says
    assert r["p_t"] == r["paired"]["p_t"] and r["residual_df"] == 3


def test_the_guard_at_three_seeds():
    # the default run's shape, 3 seeds a row: one row's seed 0 a point off, where the others wiggle by 0.05. The
    # outlier test finds it; that row's two comparisons take their paired seeds, and the rest are fitted again
    # without it, on their own small σ
    seed_effect = [0.0, 1.0, -0.5]
    wiggle = [0.05, -0.03, -0.02]
    top1 = {f"n{i}": {k: 60 + i + seed_effect[k] + wiggle[(k + i) % 3] for k in range(3)} for i in range(6)}
    chain = {"n0": None, **{f"n{i}": f"n{i - 1}" for i in range(1, 6)}}
    assert compare(top1, chain)["notes"] == []
    top1["n2"] = {k: v + (1.0, -0.6, -0.4)[k] for k, v in top1["n2"].items()}
    out = compare(top1, chain)
    assert out["family"]["outliers"] == [{"network": "n2", "seed": 0}]
    assert {r: v["analysis"] for r, v in out["rows"].items()} == {"n1": "blocked", "n2": "paired", "n3": "paired",
                                                                  "n4": "blocked", "n5": "blocked"}
    assert out["rows"]["n4"]["residual_df"] == 8  # 15 runs of 5 networks × 3 seeds: (5 − 1)(3 − 1)
    assert out["family"]["sigma_without_outliers"] < 0.1 < out["family"]["sigma"]


def test_a_network_with_no_seed_in_common_takes_its_paired_seeds():
    # c ran only seed 5, which no other network has: its contrast cannot be estimated from the blocks
    top1 = {k: dict(v) for k, v in HAND.items()}
    top1["c"] = {5: 74.0}
    rows = compare(top1, CHAIN)["rows"]
    assert rows["c"]["analysis"] == "paired" and rows["c"]["ci_method"] == "no paired seeds"
    assert math.isnan(rows["c"]["delta"]) and rows["c"]["verdict"] == ""
    # a and b alone: the paired t-test, on 2 df
    assert rows["b"]["analysis"] == "blocked" and rows["b"]["residual_df"] == 2
    assert rows["b"]["p_t"] == pytest.approx(scipy_stats.ttest_rel([73, 74, 75], [70, 72, 71]).pvalue)


def test_the_guard_sets_aside_the_rows_of_a_seed_far_off():
    # six networks of five seeds, seed effects shared, a little noise; n3's seed 4 is 6 points off: its
    # externally studentized residual is beyond Bonferroni's bound over the 30 cells, so n3's two rows (against
    # n2, and n4 against it) take their own paired seeds, the others keep the blocked fit
    rng = np.random.default_rng(2)
    seed_effect = [0.0, 1.0, -0.5, 0.7, -1.2]
    top1 = {f"n{i}": {k: 60 + i + seed_effect[k] + rng.normal(0, 0.3) for k in range(5)} for i in range(6)}
    top1["n3"][4] += 6
    chain = {"n0": None, **{f"n{i}": f"n{i - 1}" for i in range(1, 6)}}
    out = compare(top1, chain)
    assert out["family"]["outliers"] == [{"network": "n3", "seed": 4}]
    analysis = {name: r["analysis"] for name, r in out["rows"].items()}
    assert analysis["n3"] == analysis["n4"] == "paired"
    if out["family"]["variances_p"] >= 0.05:
        assert analysis["n1"] == analysis["n2"] == analysis["n5"] == "blocked"
    assert any("n3 seed4 far off its row" in note for note in out["notes"])
    # the rows left are fitted again without n3's runs: their σ is the seeds' own 0.3, not the outlier's
    assert out["family"]["sigma_without_outliers"] < 0.5 < out["family"]["sigma"]


def test_fidelity_on_a_constructed_table():
    ours = {"a": 70.0, "b": 72.0, "c": 71.0, "d": 75.0}
    paper = {"a": 78.0, "b": 79.0, "c": 80.0, "d": 81.0}
    chain = {"a": None, "b": "a", "c": "b", "d": "c"}
    passed = {("b", "a"): "better", ("c", "b"): "better", ("d", "c"): "better"}
    f = fidelity(ours, paper, chain, passed)
    # pairs: 5 concordant, 1 discordant (b, c) → τ = 4/6; ranks (1,3,2,4) vs (1,2,3,4): Σd² = 2 → ρ = 1 − 12/60
    assert f["kendall_tau"] == pytest.approx(4 / 6) and f["spearman_rho"] == pytest.approx(0.8)
    # every paper Δ is +1 and passes its test: b agrees, c disagrees, d agrees
    assert f["signs_counted"] == ["b", "c", "d"] and f["signs_agree"] == ["b", "d"]
    assert f["sign_agreement"] == pytest.approx(2 / 3)
    # the paper's own test calls c's Δ within noise: only b and d are counted
    f = fidelity(ours, paper, chain, {**passed, ("c", "b"): "within noise"})
    assert f["signs_counted"] == ["b", "d"] and f["sign_agreement"] == 1.0 and "Welch" in f["signs_counted_are"]
    # a row whose baseline is not the paper's step before it (leave-one-out) has no paper Δ to count
    assert fidelity(ours, paper, {**chain, "d": "b"}, passed)["signs_counted"] == ["b", "c"]


def test_the_papers_own_steps_under_welch_by_hand():
    from convnext_roadmap import paper
    from convnext_roadmap.stats import paper_steps

    # Table 10, ResNet-50 78.82 ± 0.07 → stage ratio 79.36 ± 0.07, 3 runs each: Welch's t = 0.54 / √(2 · 0.07² / 3)
    # = 9.448, on 2(3 − 1) = 4 df when the stds are equal; on 4 df p = 1 − x(3 − x²)/2 with x = t / √(4 + t²)
    t = 0.54 / (2 * 0.07 ** 2 / 3) ** 0.5
    x = t / (4 + t * t) ** 0.5
    steps = paper_steps(paper.path("resnet50"))
    first = steps[0]
    assert (first["step"], first["baseline"]) == ("stage_ratio", "resnet50")
    assert first["delta"] == pytest.approx(0.54) and first["p"] == pytest.approx(1 - x * (3 - x * x) / 2)
    # patchify stem 79.51 ± 0.18 against 79.36 ± 0.07: t = 0.15 / √((0.18² + 0.07²) / 3) = 1.345, on the
    # Welch–Satterthwaite df (0.0324 + 0.0049)² / (0.0324² + 0.0049²) · (3 − 1) = 2.592
    second = steps[1]
    df = (0.0324 + 0.0049) ** 2 / (0.0324 ** 2 + 0.0049 ** 2) * 2
    assert second["p"] == pytest.approx(2 * scipy_stats.t.sf(0.15 / ((0.0324 + 0.0049) / 3) ** 0.5, df))
    # Holm over the 12 steps of the path (layer_scale has no printed row): four of the paper's Δs do not pass
    # (worked by hand in issue 21: patchify stem Holm p 0.85, GELU 0.92, fewer norms 0.39, LN 0.92)
    assert len(steps) == 12
    quiet = {r["step"]: round(r["p_holm"], 2) for r in steps if r["verdict"] == "within noise"}
    assert quiet == {"patchify_stem": 0.85, "gelu": 0.92, "fewer_norms": 0.39, "layernorm": 0.92}
    # ResNet-200's path (Table 11) prints no stds: nothing to test, and each step says so
    big = paper_steps(paper.path("resnet200"))
    assert {r["verdict"] for r in big} == {"not tested: no std printed"}


def test_seeds_needed_from_the_noncentral_t_by_hand():
    from convnext_roadmap.stats import power, seeds_needed

    # 8 networks × 3 seeds, σ 1.95: 14 residual df, the SE of a Δ 1.95 √(2/3) = 1.592; at Holm's strictest level
    # 0.05 / 7, t_crit = t(1 − 0.05/14; 14) = 3.1466 (so a Δ of 5.0 = 3.1466 · 1.592 is always resolved);
    # the power of a true Δ of 1 is P(|T| > t_crit) for T noncentral t(14, 1 / 1.592)
    se = 1.95 * (2 / 3) ** 0.5
    crit = scipy_stats.t.ppf(1 - 0.05 / 14, 14)
    assert crit * se == pytest.approx(5.01, abs=0.01)
    nct = scipy_stats.nct(14, 1 / se)
    assert power(3, 8, 1.95, 1.0) == pytest.approx(nct.sf(crit) + nct.cdf(-crit))
    # the seeds a 1-point Δ needs at 80%: 96 (issue 21's example): 95 falls short, 96 reaches it
    n = 96
    for seeds, reaches in ((n - 1, False), (n, True)):
        df, se = 7 * (seeds - 1), 1.95 * (2 / seeds) ** 0.5
        crit = scipy_stats.t.ppf(1 - 0.05 / 14, df)
        p = scipy_stats.nct(df, 1 / se).sf(crit) + scipy_stats.nct(df, 1 / se).cdf(-crit)
        assert (p >= 0.8) == reaches
    assert seeds_needed(1.0, 1.95, 8) == 96
    assert seeds_needed(5.0, 1.95, 8) < seeds_needed(2.0, 1.95, 8) < 96


def test_equal_differences_on_every_seed_are_not_certainty():
    # 1 − 0.8 = 0.19999999999999996 and so on: no spread but float noise; a t-test would give p ≈ 1e-31
    r = paired([1.0, 2.0, 3.0], [0.8, 1.8, 2.8])
    assert r["ci_method"] == "every seed alike: no interval" and r["p_t"] == r["p_sign_flip"] == 0.25
    assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) and math.isnan(r["resolvable"])
    out = compare({"a": {0: 0.8, 1: 1.8, 2: 2.8}, "b": {0: 1.0, 1: 2.0, 2: 3.0}}, {"a": None, "b": "a"})
    assert out["rows"]["b"]["verdict"] == "within noise"


def test_levelled_off_by_hand():
    from convnext_roadmap.results import below_best

    assert below_best([10.0, 20.0, 30.0, 29.0, 28.0]) == pytest.approx(1.0)  # best 30, last three 29 on average
    assert below_best([10.0, 20.0, 30.0]) == pytest.approx(10.0)  # still climbing
    assert below_best([50.0, 60.0]) is None  # too few epochs to tell
