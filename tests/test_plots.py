"""plots.py: what the figures draw, read back from their axes, for a table built by hand."""

import math

import pandas as pd
from matplotlib.container import BarContainer
from scipy import stats as scipy_stats

from convnext_roadmap import plots


def _table():
    # three rows in roadmap order: a finished baseline, a step within noise, a step that failed
    return pd.DataFrame({
        "step": ["resnet50", "stage_ratio", "patchify_stem"], "label": ["ResNet-50", "stage ratio", "patchify"],
        "top1": [70.0, 71.5, None], "top1_std": [1.0, 2.0, None], "seeds_done": [3, 2, 0],
        "gflops_224": [4.09, 4.53, 4.42], "verdict": [None, "within noise", None], "status": ["completed"] * 2
        + ["failed"], "paper_top1": [78.82, 79.36, 79.51], "paper_verdict": [None, "better", "within noise"]})


def test_figure2_draws_each_rows_mean_interval_and_verdict(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    groups = {"resnet50": "baseline", "stage_ratio": "macro design", "patchify_stem": "macro design"}
    plots.figure2(_table(), groups, tmp_path / "f.png", "title")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ours, theirs = figures[0].axes[:2]
    (bars,) = [c for c in ours.containers if isinstance(c, BarContainer)]
    # top to bottom in roadmap order; a failed run has no bar length, and its status is written instead
    assert [(b.get_y() + b.get_height() / 2, b.get_width()) for b in bars] == [(2, 70.0), (1, 71.5), (0, 0.0)]
    assert [b.get_hatch() for b in bars] == [None, "///", None]
    assert "failed" in [t.get_text() for t in ours.texts]
    assert "71.5  (within noise)" in [t.get_text() for t in ours.texts]
    # the error bars: half the 95% t interval of the mean, by hand: t(0.975, n − 1) · sd / √n
    (segments,) = [c for c in ours.collections if len(c.get_segments()) == 3]
    halves = [(s[1][0] - s[0][0]) / 2 for s in segments.get_segments()]
    expected = [scipy_stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3), scipy_stats.t.ppf(0.975, 1) * 2.0 / math.sqrt(2), 0]
    assert [round(h, 6) for h in halves] == [round(e, 6) for e in expected]
    # the paper's panel: its numbers on the same rows, an open marker where its own Δ is within noise
    (points,) = theirs.collections
    assert points.get_offsets().tolist() == [[78.82, 2], [79.36, 1], [79.51, 0]]
    assert [tuple(c) for c in points.get_facecolors()] == [(0, 0, 0, 1), (0, 0, 0, 1), (1, 1, 1, 1)]


def test_the_fidelity_line_says_what_it_counted():
    f = {"rows": ["a", "b", "c"], "kendall_tau": 1 / 3, "spearman_rho": float("nan"),
         "signs_counted": ["b", "c"], "signs_agree": ["c"]}
    assert plots.fidelity_text(f) == ("vs the paper over 3 rows: Kendall τ +0.33, Spearman ρ n/a, 1/2 Δ signs "
                                      "agree")
    assert plots.fidelity_text({**f, "signs_counted": []}).endswith("no paper Δ beyond noise")
    assert plots.fidelity_text({"rows": []}) == "no row in common with the paper"
