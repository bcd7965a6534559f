"""The report: the annotated table, table.md, stats.json, fidelity.json and the figures of an experiment, worked out
by hand on constructed experiments."""

import pytest

from convnext_roadmap.experiment import Experiment


def test_report_of_three_seeds_by_hand(tmp_path, monkeypatch):
    """The statistics as the table, table.md and fidelity.json carry them, for a constructed experiment of three
    seeds whose every number is worked out by hand below."""
    import json
    import shutil

    import pandas as pd

    from convnext_roadmap import report, results
    from convnext_roadmap.plan import save

    top1 = {"resnet50": [70.0, 71.0, 72.5], "stage_ratio": [71.0, 71.5, 74.5], "patchify_stem": [68.0, 68.0, 72.0]}
    save(tmp_path, "resnet50", "cpu_proxy", [0, 1, 2],
         [{"name": n, "label": n, "baseline": b, "group": "path", "gflops": 4.0, "params": 25e6}
          for n, b in (("resnet50", None), ("stage_ratio", "resnet50"), ("patchify_stem", "stage_ratio"))])
    for name, values in top1.items():
        for seed, v in enumerate(values):
            run = results.run_dir(tmp_path, name, seed)
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "top1": v, "train_loss": 1.0}) + "\n")
            climbing = (name, seed) == ("stage_ratio", 2)
            results.write_json(run / "summary.json", {"status": "completed", "name": name, "seed": seed,
                                                      "final_top1": v, "train_img_s": 100.0,
                                                      "levelled_off": not climbing,
                                                      "last_epochs_below_best": 2.3 if climbing else 0.5})
    from matplotlib.container import BarContainer

    from convnext_roadmap import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep each figure to look at
    report.write(tmp_path, quiet=True)
    table = pd.read_csv(tmp_path / "table.csv")
    new = ["top1_std", "delta_top1", "delta_ci_low", "delta_ci_high", "delta_p", "delta_p_holm", "delta_resolvable",
           "verdict"]
    at = list(table.columns).index("top1_std")
    assert list(table.columns)[at:at + 8] == new
    r = table.set_index("step")
    # resnet50: 70, 71, 72.5: mean 71.1667, sample sd √(3.1667 / 2) = 1.258306
    assert r.top1_std["resnet50"] == pytest.approx(1.258306, abs=1e-6)
    assert pd.isna(r.delta_top1["resnet50"]) and pd.isna(r.verdict["resnet50"])
    # stage_ratio − resnet50 = (1, 0.5, 2): mean 7/6, half-width 1.897291, p 0.118082 (test_paired_three_seeds_by_hand)
    # patchify_stem − stage_ratio = (−3, −3.5, −2.5): mean −3, sd 0.5, t = −3 / (0.5 / √3) = −10.392305; on 2
    # degrees of freedom p = 1 − |t| / √(2 + t²) = 1 − 10.392305 / √110 = 0.009133, half-width 4.302653 · 0.5 / √3
    assert r.delta_top1["stage_ratio"] == pytest.approx(7 / 6)
    assert r.delta_p["patchify_stem"] == pytest.approx(0.009133, abs=1e-6)
    assert (r.delta_ci_low["patchify_stem"], r.delta_ci_high["patchify_stem"]) == pytest.approx(
        (-3 - 1.242069, -3 + 1.242069), abs=1e-6)
    # Holm over the two: 2 · 0.009133 = 0.018266, then max(0.018266, 1 · 0.118082)
    assert r.delta_p_holm["patchify_stem"] == pytest.approx(0.018266, abs=1e-6)
    assert r.delta_p_holm["stage_ratio"] == pytest.approx(0.118082, abs=1e-6)
    # resolvable at 0.05 / 2: t at 0.9875 on 2 df, c = 0.975, t = c√2 / √(1 − c²) = 6.205338
    assert r.delta_resolvable["patchify_stem"] == pytest.approx(6.205338 * 0.5 / 3 ** 0.5, abs=1e-5)
    assert r.delta_resolvable["stage_ratio"] == pytest.approx(6.205338 * (7 / 12) ** 0.5 / 3 ** 0.5, abs=1e-5)
    assert (r.verdict["stage_ratio"], r.verdict["patchify_stem"]) == ("within noise", "worse")
    md = (tmp_path / "table.md").read_text()
    assert "71.2 ± 1.3" in md and "+1.2 [−0.7, +3.1]" in md and "−3.0 [−4.2, −1.8]" in md
    # fidelity against the paper's Table 10 (78.82 ± 0.07, 79.36 ± 0.07, 79.51 ± 0.18): our order stage_ratio >
    # resnet50 > patchify_stem, the paper's patchify_stem > stage_ratio > resnet50: of 3 pairs 1 concordant, 2
    # not, τ = −1/3; rank differences (1, 1, −2), ρ = 1 − 6 · 6 / (3 · 8) = −0.5. Both paper Δs (+0.54, +0.15)
    # exceed their std (0.057, 0.111); ours agree on the first only
    fid = json.loads((tmp_path / "fidelity.json").read_text())
    assert {"kendall_tau", "spearman_rho", "sign_agreement", "rows"} <= set(fid)
    assert fid["kendall_tau"] == pytest.approx(-1 / 3) and fid["spearman_rho"] == pytest.approx(-0.5)
    assert fid["sign_agreement"] == pytest.approx(0.5)
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
