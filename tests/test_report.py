"""The report: the annotated table, table.md, stats.json, fidelity.json and the figures of an experiment, worked out
by hand on constructed experiments."""

import pytest

from convnext_roadmap.experiment import Experiment

from conftest import three_by_three


def test_report_of_three_seeds_by_hand(tmp_path, monkeypatch):
    """The statistics as the table, table.md and fidelity.json carry them, for a constructed experiment of three
    seeds whose every number is worked out by hand below."""
    import json
    import shutil

    import pandas as pd

    from convnext_roadmap import report, results

    top1 = three_by_three(tmp_path)
    from matplotlib.container import BarContainer

    from convnext_roadmap import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep each figure to look at
    report.write(tmp_path, quiet=True)
    table = pd.read_csv(tmp_path / "table.csv")
    new = ["top1_std", "delta_top1", "delta_ci_low", "delta_ci_high", "delta_p", "delta_p_holm", "delta_resolvable",
           "verdict", "analysis", "residual_df"]
    at = list(table.columns).index("top1_std")
    assert list(table.columns)[at:at + 10] == new
    r = table.set_index("step")
    # resnet50: 70, 71, 72.5: mean 71.1667, sample sd √(3.1667 / 2) = 1.258306
    assert r.top1_std["resnet50"] == pytest.approx(1.258306, abs=1e-6)
    assert pd.isna(r.delta_top1["resnet50"]) and pd.isna(r.verdict["resnet50"])
    # the blocked analysis of the 3 × 3 table: row means 71 1/6, 72 1/3, 69 1/3, seed means 69 2/3, 70 1/6, 73,
    # grand mean 70 17/18; residuals × 18: (2, 11, −13), (−1, −1, 2), (−1, −10, 11): SSE = 522 / 324 on
    # (3 − 1)(3 − 1) = 4 df, MSE = 29/72, the SE of a Δ √(2 · MSE / 3) = √(29/108) = 0.518188
    se = (29 / 108) ** 0.5
    assert (r.analysis["stage_ratio"], r.residual_df["stage_ratio"]) == ("blocked", 4)
    assert r.delta_top1["stage_ratio"] == pytest.approx(7 / 6)
    # stage_ratio: t = (7/6) / 0.518188 = 2.251436; patchify_stem: t = −3 / 0.518188 = −5.789406, on 4 df
    # (the t distribution on 4 df: F(t) = 1/2 + (t/√(4 + t²)) (1/2 + 1/(4 + t²)) · 1, with x = t/√(4+t²):
    # p = 1 − x(3 − x²)/2 = 0.087506 and 0.004424)
    assert r.delta_p["stage_ratio"] == pytest.approx(0.087506, abs=1e-6)
    assert r.delta_p["patchify_stem"] == pytest.approx(0.004424, abs=1e-6)
    half = 2.776445 * se  # t₀.₉₇₅,₄
    assert (r.delta_ci_low["patchify_stem"], r.delta_ci_high["patchify_stem"]) == pytest.approx(
        (-3 - half, -3 + half), abs=1e-5)
    # Holm over the two: 2 · 0.004424 = 0.008848, then max(0.008848, 1 · 0.087506)
    assert r.delta_p_holm["patchify_stem"] == pytest.approx(0.008848, abs=1e-6)
    assert r.delta_p_holm["stage_ratio"] == pytest.approx(0.087506, abs=1e-6)
    # resolvable at 0.05 / 2 on 4 df: t₀.₉₈₇₅,₄ = 3.495406
    assert r.delta_resolvable["patchify_stem"] == pytest.approx(3.495406 * se, abs=1e-5)
    assert (r.verdict["stage_ratio"], r.verdict["patchify_stem"]) == ("within noise", "worse")
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert saved["family"]["residual_df"] == 4 and saved["rows"]["stage_ratio"]["analysis"] == "blocked"
    # the paired test stays beside it: stage_ratio − resnet50 = (1, 0.5, 2), p 0.118082 on 2 df
    assert saved["rows"]["stage_ratio"]["paired"]["p_t"] == pytest.approx(0.118082, abs=1e-6)
    md = (tmp_path / "table.md").read_text()
    assert "71.2 ± 1.3" in md and "+1.2 [−0.3, +2.6]" in md and "−3.0 [−4.4, −1.6]" in md
    # fidelity against the paper's Table 10 (78.82 ± 0.07, 79.36 ± 0.07, 79.51 ± 0.18): our order stage_ratio >
    # resnet50 > patchify_stem, the paper's patchify_stem > stage_ratio > resnet50: of 3 pairs 1 concordant, 2
    # not, τ = −1/3; rank differences (1, 1, −2), ρ = 1 − 6 · 6 / (3 · 8) = −0.5. Of the paper's two Δs, +0.54
    # passes its own test (Welch, Holm over its path) and +0.15 does not (test_stats): ours agrees on the one
    fid = json.loads((tmp_path / "fidelity.json").read_text())
    assert {"kendall_tau", "spearman_rho", "sign_agreement", "rows"} <= set(fid)
    assert fid["kendall_tau"] == pytest.approx(-1 / 3) and fid["spearman_rho"] == pytest.approx(-0.5)
    assert fid["signs_counted"] == ["stage_ratio"] and fid["sign_agreement"] == 1.0
    assert pd.isna(r.paper_verdict["resnet50"]) and r.paper_verdict["patchify_stem"] == "within noise"
    assert fid["rows"] == ["resnet50", "stage_ratio", "patchify_stem"]
    # Figure 2: rows top to bottom resnet50, stage_ratio, patchify_stem at y = 2, 1, 0; each bar's interval is
    # t₀.₉₇₅,₂ · sd / √3 about its mean (resnet50: 4.302653 · 1.258306 / √3 = 3.125804); only the within-noise
    # row is hatched; the paper's panel beside it puts each row's number on the same y
    ours, theirs = figures[0].axes[:2]
    (bars,) = [c.patches for c in ours.containers if isinstance(c, BarContainer)]
    assert [b.get_y() + b.get_height() / 2 for b in bars] == [2, 1, 0]
    assert [b.get_hatch() for b in bars] == [None, "///", None]
    (whiskers,) = [c for c in ours.collections if len(c.get_segments()) == 3]
    (x0, y0), (x1, _) = whiskers.get_segments()[0]
    assert y0 == 2 and (x0, x1) == pytest.approx((213.5 / 3 - 3.125804, 213.5 / 3 + 3.125804), abs=1e-5)
    assert theirs.collections[0].get_offsets().tolist() == [[78.82, 2], [79.36, 1], [79.51, 0]]
    line = report.not_levelled_off(Experiment.load(tmp_path))
    assert line.startswith("! not levelled off") and line.count("seed") == 1 and "stage_ratio seed2 (2.3)" in line
    # with only seed 0 finished there is a Δ (71.0 − 70.0) but no interval to print
    for name in top1:
        for seed in (1, 2):
            shutil.rmtree(results.run_dir(tmp_path, name, seed))
    report.write(tmp_path, quiet=True)
    assert "+1.0 (one seed: no interval)" in (tmp_path / "table.md").read_text()


def test_a_rounded_delta_is_never_minus_zero():
    from convnext_roadmap.report import _delta

    assert _delta({"delta": -0.04, "ci_low": -1.26, "ci_high": 0.04}) == "+0.0 [−1.3, +0.0]"
    assert _delta({"delta": -0.06, "ci_low": float("nan"), "ci_method": "one seed: no interval"}) == \
        "−0.1 (one seed: no interval)"
