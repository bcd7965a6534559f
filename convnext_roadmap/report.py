"""An experiment's report: its table from the result store, written as table.csv and table.md, and its figures."""

from __future__ import annotations

from pathlib import Path

from . import plots, results


def write(experiment_dir: Path, quiet: bool = False):
    """Build the table once and draw the figures from that same table, so that both say the same of every run;
    print the table and what was written unless `quiet`. Returns the table for people."""
    table = results.build_table(experiment_dir)
    pretty = results.write_table(experiment_dir, table)
    paths = plots.plot_experiment(experiment_dir, table)
    if not quiet:
        print(pretty.to_string(index=False))
        print(f"wrote {experiment_dir / 'table.csv'}, {experiment_dir / 'table.md'}, "
              + ", ".join(p.name for p in paths))
    return pretty, paths
