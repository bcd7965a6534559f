"""data/sources.py and data/synthetic.py: where images come from — the synthetic set, an ImageFolder tree, a
Kaggle-style CSV — and the errors a bad one gives."""

import hashlib

import pytest

from convnext_roadmap import RoadmapError
from convnext_roadmap.data import load_splits, make_synthetic

from conftest import make_imagefolder


def _digest(root):
    return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()


def test_synthetic_is_deterministic_and_an_imagefolder(tmp_path):
    a = make_synthetic(tmp_path / "a", train_per_class=2, val_per_class=1, size=32)
    b = make_synthetic(tmp_path / "b", train_per_class=2, val_per_class=1, size=32)
    assert _digest(a) == _digest(b)
    train, val = load_splits(f"imagefolder:{a}")
    assert len(train.classes) == 10 and len(train.samples) == 20 and len(val.samples) == 10
    assert train.classes == val.classes


def test_imagefolder_errors(tmp_path):
    with pytest.raises(RoadmapError, match="no such folder"):
        load_splits(f"imagefolder:{tmp_path / 'nope'}")
    root = make_imagefolder(tmp_path / "d")
    (root / "train" / "emu").mkdir()
    with pytest.raises(RoadmapError, match="emu: empty class"):
        load_splits(f"imagefolder:{root}")
    (root / "train" / "emu").rmdir()
    (root / "val" / "dog").rename(root / "val" / "hog")
    with pytest.raises(RoadmapError, match="classes differ.*hog"):
        load_splits(f"imagefolder:{root}")
    with pytest.raises(RoadmapError, match="expected synthetic, imagefolder:PATH or csv:PATH"):
        load_splits("imagenet")


def test_csv_source_holds_out_a_stable_split(tmp_path):
    root = make_imagefolder(tmp_path / "d", per_class=20)
    flat = tmp_path / "kaggle" / "train"
    flat.mkdir(parents=True)
    lines = ["id,label"]
    for img in sorted((root / "train").rglob("*.png")):
        image_id = f"{img.parent.name}_{img.stem}"
        img.rename(flat / f"{image_id}.png")
        lines.append(f"{image_id},{img.parent.name}")
    (tmp_path / "kaggle" / "train.csv").write_text("\n".join(lines) + "\n")
    train, val = load_splits(f"csv:{tmp_path / 'kaggle'}")
    again_train, again_val = load_splits(f"csv:{tmp_path / 'kaggle'}")
    assert train.samples == again_train.samples and val.samples == again_val.samples
    assert len(val.samples) > 0 and len(train.samples) + len(val.samples) == 60
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    assert train.classes == ["cat", "dog", "owl"]
    (tmp_path / "kaggle" / "val.csv").write_text("id,label\ncat_0,zebra\n")
    with pytest.raises(RoadmapError, match="labels not in train.csv"):
        load_splits(f"csv:{tmp_path / 'kaggle'}")


def test_imagefolder_classes_are_indexed_in_sorted_order(tmp_path):
    # made out of order, so that the folders' creation (and directory listing) order is not the sorted one: the
    # index of a class is its place among the sorted names, in both splits, as torchvision's ImageFolder has it
    root = make_imagefolder(tmp_path / "d", classes=("owl", "cat", "emu", "dog"), per_class=3, val_per_class=2)
    train, val = load_splits(f"imagefolder:{root}")
    assert train.classes == val.classes == ["cat", "dog", "emu", "owl"]
    for split, name, n in ((train, "train", 3), (val, "val", 2)):
        assert [(p.parent.name, p.name, t) for p, t in split.samples] == [
            (c, f"{i}.png", k) for c, k in (("cat", 0), ("dog", 1), ("emu", 2), ("owl", 3)) for i in range(n)]
        assert {p for p, _ in split.samples} == set((root / name).rglob("*.png"))
