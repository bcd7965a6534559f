"""The figures: a replica of the paper's Figure 2, top-1 against GFLOPs, and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import results  # noqa: E402

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


def _groups(experiment_dir: Path) -> dict[str, str]:
    return {r["name"]: r.get("group", "") for r in results.load_plan(experiment_dir)["runs"]}


def bar_colours(df: pd.DataFrame, groups: dict[str, str]) -> list[str]:
    """Each row's colour: its part of Section 2; reference models gray, as in the paper."""
    return [GROUP_COLOURS.get(groups.get(s, ""), "#4c72b0") for s in df["step"]]


def figure2(df: pd.DataFrame, groups: dict[str, str], path: Path, title: str) -> None:
    """One horizontal bar per step, top to bottom in roadmap order: our top-1 (± std over seeds) with the step's
    GFLOPs written on it; the paper's top-1 as a diamond on its own axis above."""
    n = len(df)
    fig, ax = plt.subplots(figsize=(9, 0.42 * n + 1.6))
    y = list(range(n))[::-1]
    top1 = df["top1"].astype(float)
    colours = bar_colours(df, groups)
    std = df["top1_std"].astype(float)
    ax.barh(y, top1.fillna(0), xerr=std.fillna(0) if std.notna().any() else None, color=colours, height=0.7,
            error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"})
    done = top1.dropna()
    lo = max(0.0, (done.min() - 8) if len(done) else 0.0)
    hi = min(100.0, (done.max() + 6) if len(done) else 100.0)
    ax.set_xlim(lo, hi)
    for yi, (_, row) in zip(y, df.iterrows()):
        if pd.isna(row["top1"]):
            ax.text(lo + 0.3, yi, f"{row['status']}", va="center", fontsize=8, color="#b22222")
            continue
        ax.text(row["top1"] + 0.25, yi, f"{row['top1']:.1f}", va="center", fontsize=8)
        ax.text(lo + 0.3, yi, f"{row['gflops_224']:.1f} GF", va="center", fontsize=7, color="white",
                fontweight="bold")
    ax.set_yticks(y, [f"{lab}" for lab in df["label"]])
    ax.set_xlabel("our top-1 (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    paper = df["paper_top1"].astype(float)
    if paper.notna().any():
        twin = ax.twiny()
        twin.scatter(paper, y, marker="D", s=22, color="black", zorder=3, label="paper (ImageNet-1K)")
        span = paper.dropna()
        twin.set_xlim(span.min() - 2.5, span.max() + 1.5)
        twin.set_xlabel("paper's top-1 on ImageNet-1K (%), ◆", fontsize=9)
        twin.tick_params(labelsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLOURS[g]) for g in dict.fromkeys(groups.values())
               if g in GROUP_COLOURS]
    names = [g for g in dict.fromkeys(groups.values()) if g in GROUP_COLOURS]
    ax.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.6 / (0.42 * n + 1.6) - 0.08),
              ncol=min(len(names), 4), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10, pad=28 if paper.notna().any() else 6)
    _save(fig, path)


def accuracy_vs_flops(df: pd.DataFrame, groups: dict[str, str], path: Path, title: str) -> None:
    """Top-1 against GFLOPs (224²), each step joined to the next by an arrow."""
    done = df.dropna(subset=["top1"])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for (_, a), (_, b) in zip(done.iloc[:-1].iterrows(), done.iloc[1:].iterrows()):
        ax.annotate("", xy=(b["gflops_224"], b["top1"]), xytext=(a["gflops_224"], a["top1"]),
                    arrowprops={"arrowstyle": "->", "color": "#999999", "lw": 0.8})
    for _, row in done.iterrows():
        ax.errorbar(row["gflops_224"], row["top1"], yerr=0 if pd.isna(row["top1_std"]) else row["top1_std"],
                    fmt="o", color=GROUP_COLOURS.get(groups.get(row["step"], ""), "#4c72b0"), ms=6, capsize=2)
        ax.annotate(row["label"], (row["gflops_224"], row["top1"]), xytext=(4, 3), textcoords="offset points",
                    fontsize=7)
    ax.set_xlabel("GFLOPs at 224² (conv + linear multiply-adds)")
    ax.set_ylabel("our top-1 (%)")
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
    if acc.lines:
        acc.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_experiment(experiment_dir: Path, df: pd.DataFrame) -> list[Path]:
    """The experiment's figures, drawn from its table (`results.build_table`)."""
    experiment_dir = Path(experiment_dir)
    plan = results.load_plan(experiment_dir)
    groups = _groups(experiment_dir)
    title = f"{experiment_dir.name}: {plan['base']} roadmap, recipe {plan['recipe']}"
    paths = [experiment_dir / "figure2.png", experiment_dir / "top1_vs_gflops.png", experiment_dir / "curves.png"]
    figure2(df, groups, paths[0], title)
    accuracy_vs_flops(df, groups, paths[1], title)
    curves(results.collect(experiment_dir), paths[2], title)
    return paths
