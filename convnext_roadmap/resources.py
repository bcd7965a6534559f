"""Where the roadmap's data lives (the repository's top-level folders in a checkout, their copy inside a wheel; the
cache folder), and how a file is put in place whole.

`ablations/`, `slurm/` and `results/paper_reference.csv` are the source of truth and stay at the top of the
repository; pyproject.toml maps them into the wheel as `convnext_roadmap/_data/`. Everything that reads them asks
this module, so that `pip install .`, `pip install -e .` and a plain checkout find the same files.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`ablations`, `slurm` or `results`: the packaged copy when this is an installed wheel, else the checkout's."""
    packaged = _PACKAGE / "_data" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name


ABLATIONS = data_dir("ablations")
SLURM = data_dir("slurm")
PAPER_CSV = data_dir("results") / "paper_reference.csv"


def shown(path: Path) -> str:
    """A path as a user would type it: relative to the current directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cache_dir() -> Path:
    """Where generated data and measurements are kept between runs (`$ROADMAP_CACHE` moves it)."""
    import os

    root = os.environ.get("ROADMAP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "convnext-roadmap")
    return Path(root)


def atomic_write(path: Path, write) -> None:
    """Write through `write(file_object)` to a temporary file beside `path`, then rename it into place: a reader
    sees the old file or the new one, never half of one."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
