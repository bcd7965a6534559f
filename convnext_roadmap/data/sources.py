"""Where images come from (`--data`): the embedded synthetic set, an ImageFolder tree, or a Kaggle-style CSV, as
lists of (path, class)."""

from __future__ import annotations

import csv
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import RoadmapError
from ..resources import cache_dir
from .synthetic import SYNTHETIC_VERSION, make_synthetic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class Split:
    samples: list[tuple[Path, int]]
    classes: list[str]


# ----------------------------------------------------------------------------------------------- skipped images

class SkippedImages:
    """The images a run left out, one line each (path, why) in a file of its run folder. Loader workers and DDP
    ranks are processes of their own, so they append to one file rather than count in memory; the run counts the
    distinct paths at the end (an image skipped in every epoch, or again after a resume, counts once)."""

    def __init__(self, file: Path | None = None):
        self.file = file

    def add(self, path: Path, why: str) -> None:
        if self.file is not None:
            with open(self.file, "a") as f:  # one short line per write: appends from several processes stay whole
                f.write(f"{path}\t{why}\n")

    def count(self) -> int:
        if self.file is None or not self.file.exists():
            return 0
        return len({line.split("\t")[0] for line in self.file.read_text().splitlines() if line})


# ---------------------------------------------------------------------------------------------------- sources

def _class_folders(root: Path) -> list[str]:
    """An image folder's classes, in the order a run indexes them."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def _csv_classes(rows: list[tuple[str, str]]) -> list[str]:
    """A CSV's classes (its labels), in the order a run indexes them."""
    return sorted({label for _, label in rows})


def _scan_folder(root: Path, classes: list[str] | None = None) -> Split:
    if not root.is_dir():
        raise RoadmapError(f"{root}: no such folder (expected <class>/<image> folders)")
    found = _class_folders(root)
    if not found:
        raise RoadmapError(f"{root}: no class folders")
    if classes is not None and found != classes:
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise RoadmapError(f"{root}: classes differ from the training split's (extra: {extra[:5]}, "
                           f"missing: {missing[:5]})")
    samples = []
    for idx, name in enumerate(found):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise RoadmapError(f"{root / name}: empty class (no {', '.join(IMAGE_EXTENSIONS)} files)")
        samples += [(f, idx) for f in files]
    return Split(samples, found)


def training_classes(spec: str) -> tuple[Path, list[str]] | None:
    """(the file or folder that names them, the class names) of a `--data` spec's training split, in the order a
    run trained on them, read without scanning images; None where the spec has no training split."""
    kind, _, arg = spec.partition(":")
    root = Path(arg).expanduser()
    if kind == "csv" and (root / "train.csv").is_file():
        return root / "train.csv", _csv_classes(_read_csv(root / "train.csv"))
    if kind == "imagefolder" and (root / "train").is_dir():
        found = _class_folders(root / "train")
        return (root / "train", found) if found else None  # flat, as beside a train.csv: no class folders
    return None


def find_image(folder: Path, image_id: str) -> Path:
    path = folder / image_id
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return path
    for ext in IMAGE_EXTENSIONS:
        if (folder / f"{image_id}{ext}").exists():
            return folder / f"{image_id}{ext}"
    return path  # missing: reported by the dataset as unreadable, like a broken file


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise RoadmapError(f"{path}: expected a header row 'id,label'")
        rows = [(r[0], r[1]) for r in reader if r]
    if not rows:
        raise RoadmapError(f"{path}: no rows")
    return rows


def _held_out(image_id: str, fraction: float = 0.1) -> bool:
    """A stable split: the same ids are held out on every machine and every run."""
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def load_splits(spec: str) -> tuple[Split, Split]:
    """(train, val) for a `--data` spec: `synthetic`, `imagefolder:PATH` or `csv:PATH`."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic" and not arg:
        root = make_synthetic(cache_dir() / f"synthetic-{SYNTHETIC_VERSION}")
        kind, arg = "imagefolder", str(root)
    if kind == "imagefolder" and arg:
        root = Path(arg).expanduser()
        if not root.is_dir():
            raise RoadmapError(f"--data {spec}: no such folder")
        train = _scan_folder(root / "train")
        return train, _scan_folder(root / "val", train.classes)
    if kind == "csv" and arg:
        root = Path(arg).expanduser()
        table = root / "train.csv"
        if not table.is_file():
            raise RoadmapError(f"--data {spec}: {table} not found (expected train.csv with id,label and train/)")
        rows = _read_csv(table)
        classes = _csv_classes(rows)
        index = {c: i for i, c in enumerate(classes)}
        images = root / "train"
        if (root / "val.csv").is_file():
            val_rows = _read_csv(root / "val.csv")
            unknown = sorted({lab for _, lab in val_rows} - set(classes))
            if unknown:
                raise RoadmapError(f"{root / 'val.csv'}: labels not in train.csv: {unknown[:5]}")
            val_images = root / "val" if (root / "val").is_dir() else images
            train_rows = rows
        else:
            val_rows = [r for r in rows if _held_out(r[0])]
            train_rows = [r for r in rows if not _held_out(r[0])]
            val_images = images
        if not images.is_dir():
            raise RoadmapError(f"--data {spec}: {images} not found (the images of train.csv)")
        return (Split([(find_image(images, i), index[lab]) for i, lab in train_rows], classes),
                Split([(find_image(val_images, i), index[lab]) for i, lab in val_rows], classes))
    raise RoadmapError(f"--data {spec}: expected synthetic, imagefolder:PATH or csv:PATH")


# ------------------------------------------------------------------------------------------------- subsets

def make_subset(source: Path, target: Path, classes: int) -> list[str]:
    """A class subset of an ImageFolder tree (e.g. ImageNet-100 from ImageNet-1K): every k-th class in sorted
    order, so that the choice is the same everywhere, linked (not copied) into target/train and target/val."""
    source, target = Path(source).expanduser(), Path(target).expanduser()
    if not (source / "train").is_dir() or not (source / "val").is_dir():
        raise RoadmapError(f"{source}: expected train/<class>/ and val/<class>/ folders")
    names = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    if not 1 <= classes <= len(names):
        raise RoadmapError(f"--classes {classes}: expected 1 to {len(names)} (the classes of {source / 'train'})")
    if target.exists() and any(target.iterdir()):
        raise RoadmapError(f"{target}: exists and is not empty")
    chosen = names[:: len(names) // classes][:classes]
    missing = [c for c in chosen if not (source / "val" / c).is_dir()]
    if missing:
        raise RoadmapError(f"{source / 'val'}: no folder for {', '.join(missing[:3])}")
    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None, prefix=".subset-"))
    for split in ("train", "val"):
        (tmp / split).mkdir()
        for name in chosen:
            (tmp / split / name).symlink_to((source / split / name).resolve(), target_is_directory=True)
    if target.exists():
        target.rmdir()
    tmp.rename(target)
    return chosen
