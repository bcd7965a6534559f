"""The figures: the paper's Figure 2 beside ours, top-1 against GFLOPs, and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

from . import results, stats  # noqa: E402

# One colour per part of Section 2, as Figure 2 groups its bars.
GROUP_COLOURS = {
    "baseline": "#8c8c8c", "macro design": "#4c72b0", "ResNeXt-ify": "#55a868", "inverted bottleneck": "#c44e52",
    "large kernel": "#8172b2", "micro design": "#dd8452", "released model": "#937860", "patched": "#64b5cd",
    "leave one out": "#da8bc3", "reference": "#b0b0b0",
}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    results.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=150))
    plt.close(fig)


def bar_colours(df: pd.DataFrame, groups: dict[str, str]) -> list[str]:
    """Each row's colour: its part of Section 2; reference models gray, as in the paper."""
    return [GROUP_COLOURS.get(groups.get(s, ""), "#4c72b0") for s in df["step"]]


def _ci_half(df: pd.DataFrame) -> pd.Series:
    """Half the 95% t interval of each row's mean top-1 over its finished seeds (0 with fewer than two)."""
    n = df["seeds_done"]
    return pd.Series([stats.mean_half_width(sd, k) if k > 1 and pd.notna(sd) else 0.0
                      for sd, k in zip(df["top1_std"], n)], index=df.index)


def figure2(df: pd.DataFrame, groups: dict[str, str], path: Path, title: str, fidelity: dict | None = None) -> None:
    """Figure 2 as two panels with the same rows, top to bottom in roadmap order: our top-1 (bars, with the 95%
    interval of the mean over seeds, the step's GFLOPs written on it, hatched where the step's Δ is within noise),
    and beside it, on its own scale, the paper's top-1 on ImageNet-1K."""
    n = len(df)
    paper = df["paper_top1"].astype(float)
    fig, (ax, right) = plt.subplots(1, 2, figsize=(11, 0.42 * n + 2.2), sharey=True,
                                    gridspec_kw={"width_ratios": [3, 1.4], "wspace": 0.05})
    y = list(range(n))[::-1]
    top1 = df["top1"].astype(float)
    half = _ci_half(df)
    noise = df.get("verdict", pd.Series([""] * n)).fillna("").eq("within noise").tolist()
    bars = ax.barh(y, top1.fillna(0), xerr=half if (half > 0).any() else None, color=bar_colours(df, groups),
                   height=0.7, error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"})
    for bar, quiet in zip(bars, noise):
        if quiet:
            bar.set_hatch("///")
            bar.set_edgecolor("white")
    done = top1.dropna()
    lo = max(0.0, (done - half).min() - 4) if len(done) else 0.0
    hi = (done + half).max() + 12 if len(done) else 100.0  # room for the value and verdict, also beside 100%
    ax.set_xlim(lo, hi)
    ax.set_xticks([t for t in ax.get_xticks() if lo <= t <= min(hi, 100)])
    for yi, (_, row), h in zip(y, df.iterrows(), half):
        if pd.isna(row["top1"]):
            ax.text(lo + 0.3, yi, f"{row['status']}", va="center", fontsize=8, color="#b22222")
            continue
        verdict = row.get("verdict") if isinstance(row.get("verdict"), str) else ""
        ax.text(row["top1"] + h + 0.25, yi, f"{row['top1']:.1f}" + (f"  ({verdict})" if verdict else ""),
                va="center", fontsize=7.5, clip_on=True)
        ax.text(lo + 0.3, yi, f"{row['gflops_224']:.1f} GF", va="center", fontsize=7, color="white",
                fontweight="bold")
    ax.set_yticks(y, list(df["label"]))
    ax.set_xlabel("our top-1 (%), mean and 95% interval over seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    # the paper's own Δ within noise (Welch's t on its printed means and stds, Holm over its path): an open marker
    paper_noise = df.get("paper_verdict", pd.Series([None] * n)).eq("within noise").tolist()
    if paper.notna().any():
        right.scatter(paper, y, marker="D", s=22, facecolors=["white" if q else "black" for q in paper_noise],
                      edgecolors="black", zorder=3)
        for yi, v, q in zip(y, paper, paper_noise):
            if pd.notna(v):
                right.text(v + 0.1, yi, f"{v:.1f}" + ("  (within noise)" if q else ""), va="center", fontsize=7.5)
        span = paper.dropna()
        right.set_xlim(span.min() - 1.0, span.max() + 1.0)
    right.set_xlabel("the paper's top-1 (%), ImageNet-1K")
    right.grid(axis="x", alpha=0.3)
    right.tick_params(axis="y", length=0)
    names = [g for g in dict.fromkeys(groups.get(s, "") for s in df["step"]) if g in GROUP_COLOURS]
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLOURS[g]) for g in names]
    if any(noise):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="#999999", hatch="///", edgecolor="white"))
        names.append("Δ within noise")
    if any(paper_noise):
        handles.append(plt.Line2D([], [], marker="D", linestyle="", markerfacecolor="white", markeredgecolor="black"))
        names.append("the paper's Δ within noise")
    if names:  # none when every row's group is one of a user's own and no step is within noise
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=7, frameon=False)
    subtitle = f"\n{fidelity_text(fidelity)}" if fidelity else ""
    fig.suptitle(title + subtitle, fontsize=9.5)
    fig.subplots_adjust(left=0.17, right=0.97, top=1 - 0.75 / fig.get_figheight(), bottom=0.9 / fig.get_figheight())
    # a long label (a patched run's name) reaches past the left margin: the image grows to hold it
    results.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=150, bbox_inches="tight"))
    plt.close(fig)


def fidelity_text(f: dict) -> str:
    if not f or not f.get("rows"):
        return "no row in common with the paper"
    agree = (f"{len(f['signs_agree'])}/{len(f['signs_counted'])} Δ signs agree" if f.get("signs_counted")
             else "no paper Δ beyond noise")
    def num(v):
        return "n/a" if v is None or v != v else f"{v:+.2f}"

    rows = f"{len(f['rows'])} row" + ("s" if len(f["rows"]) != 1 else "")
    return (f"vs the paper over {rows}: Kendall τ {num(f['kendall_tau'])}, "
            f"Spearman ρ {num(f['spearman_rho'])}, {agree}")


def accuracy_vs_flops(df: pd.DataFrame, groups: dict[str, str], baselines: dict[str, str | None], path: Path,
                      title: str) -> None:
    """Top-1 (with the 95% interval of the mean over seeds) against GFLOPs at 224², an arrow from the run each
    is measured against (the step before it on a path; the full path for a network left out)."""
    done = df.dropna(subset=["top1"])
    half = _ci_half(df)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    points = {row["step"]: (row["gflops_224"], row["top1"]) for _, row in done.iterrows()}
    for end, start in results.compared_with(list(points), baselines).items():
        if start is not None:
            ax.annotate("", xy=points[end], xytext=points[start],
                        arrowprops={"arrowstyle": "->", "color": "#999999", "lw": 0.8})
    for i, row in done.iterrows():
        ax.errorbar(row["gflops_224"], row["top1"], yerr=half[i], fmt="o",
                    color=GROUP_COLOURS.get(groups.get(row["step"], ""), "#4c72b0"), ms=6, capsize=2)
        ax.annotate(row["label"], (row["gflops_224"], row["top1"]), xytext=(4, 3), textcoords="offset points",
                    fontsize=7)
    ax.set_xlabel("GFLOPs at 224² (conv + linear multiply-adds)")
    ax.set_ylabel("our top-1 (%), mean and 95% interval over seeds")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def curves(records: list[dict], path: Path, title: str) -> None:
    """Validation top-1 and training loss per epoch, one line per step (seeds averaged)."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r["name"] for r in records))
    cmap = plt.get_cmap("viridis", max(len(names), 2))
    for i, name in enumerate(names):
        frames = [pd.DataFrame(r["metrics"]) for r in records if r["name"] == name and r["metrics"]]
        if not frames:
            continue
        m = pd.concat(frames).groupby("epoch").mean(numeric_only=True)
        acc.plot(m.index, m["top1"], color=cmap(i), label=name, lw=1.4)
        loss.plot(m.index, m["train_loss"], color=cmap(i), lw=1.4)
    acc.set(xlabel="epoch", ylabel="validation top-1 (%)")
    loss.set(xlabel="epoch", ylabel="training loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    if acc.lines:
        acc.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_experiment(exp, df: pd.DataFrame, fidelity: dict | None = None) -> list[Path]:
    """The experiment's figures, drawn from its table (with its statistics) and its fidelity to the paper."""
    paths = [exp.path / "figure2.png", exp.path / "top1_vs_gflops.png", exp.path / "curves.png"]
    figure2(df, exp.groups, paths[0], exp.title, fidelity)
    accuracy_vs_flops(df, exp.groups, exp.baselines, paths[1], exp.title)
    curves(exp.cells, paths[2], exp.title)
    return paths
