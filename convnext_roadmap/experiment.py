"""An experiment read once from its folder: its plan, one cell per (run, seed) with its summary and epochs, the
baselines and groups, and the paper's rows. The table, the statistics, the report and the plots all take this one
object; nothing after it reads the folder again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import paper, results


@dataclass
class Experiment:
    path: Path
    plan: dict
    # one per (run, seed) of the plan, finished or not: the run's plan entry, seed, dir, status (completed, failed,
    # running: a live process holds it, interrupted: epochs but no summary, or missing), summary and metrics
    cells: list[dict]
    baselines: dict[str, str | None] = field(default_factory=dict)  # run → the run its Δ is measured against
    groups: dict[str, str] = field(default_factory=dict)  # run → its part of Section 2 (Figure 2's colours)
    paper_rows: dict[str, dict | None] = field(default_factory=dict)  # run → the paper's printed row, if any

    @classmethod
    def load(cls, path: Path) -> Experiment:
        path = Path(path)
        plan = results.load_plan(path)
        cells = []
        for run in plan["runs"]:
            for seed in run.get("seeds", plan.get("seeds", [])):
                folder = results.run_dir(path, run["name"], seed)
                summary = results.read_json(folder / "summary.json") or {}
                metrics = results.read_metrics(folder)
                status = (summary.get("status") or ("running" if results.lock_holder(folder) else None)
                          or ("interrupted" if metrics else "missing"))
                cells.append({**run, "seed": seed, "dir": str(folder), "status": status, "summary": summary,
                              "metrics": metrics})
        recipe = plan.get("paper_recipe", paper.PAPER_RECIPE)
        return cls(path, plan, cells,
                   baselines={r["name"]: r.get("baseline") for r in plan["runs"]},
                   groups={r["name"]: r.get("group", "") for r in plan["runs"]},
                   paper_rows={r["name"]: paper.row(plan["base"], r["name"], recipe) for r in plan["runs"]})

    @property
    def title(self) -> str:
        return f"{self.path.name}: {self.plan['base']} roadmap, recipe {self.plan['recipe']}"

    def top1_by_seed(self) -> dict[str, dict[int, float]]:
        """Each run's final top-1 by seed, for the runs' finished seeds."""
        out: dict[str, dict[int, float]] = {}
        for c in self.cells:
            if c["status"] == "completed":
                out.setdefault(c["name"], {})[c["seed"]] = c["summary"]["final_top1"]
        return out

    def table(self):
        """One row per run of the plan, in its order, seeds aggregated (sample std)."""
        import pandas as pd

        rows = []
        for run in self.plan["runs"]:
            mine = [c for c in self.cells if c["name"] == run["name"]]
            done = [c for c in mine if c["status"] == "completed"]
            top1 = pd.Series([c["summary"]["final_top1"] for c in done], dtype=float)
            ref = self.paper_rows[run["name"]]
            statuses = sorted({c["status"] for c in mine})
            failed = [c for c in mine if c["status"] == "failed"]
            rows.append({
                "step": run["name"],
                "label": run["label"],
                "group": run.get("group", ""),
                "gflops_224": run["gflops"],
                "params_m": run["params"] / 1e6,
                "train_img_s": _mean([c["summary"].get("train_img_s") for c in done]),
                "top1": top1.mean() if len(top1) else None,
                "top1_std": top1.std(ddof=1) if len(top1) > 1 else None,
                "seeds": f"{len(done)}/{len(mine)}",
                "seeds_done": len(done),
                "paper_top1": ref["paper_top1"] if ref is not None else None,
                "paper_gflops": ref["paper_gflops"] if ref is not None else None,
                "status": "completed" if statuses == ["completed"] else ", ".join(statuses),
                "error": failed[0]["summary"].get("error") if failed else None,
            })
        return pd.DataFrame(rows)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
