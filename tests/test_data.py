import hashlib
import json
import logging

import pytest

from convnext_roadmap import RoadmapError, resolve_config
from convnext_roadmap.cli import main
from convnext_roadmap.data import ImageDataset, Split, load_splits, make_loaders, make_synthetic

from conftest import SMOKE, make_imagefolder


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


def test_unreadable_image_is_skipped_and_counted(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d")
    bad = root / "train" / "cat" / "0.png"
    bad.write_bytes(b"not a png")
    train, _ = load_splits(f"imagefolder:{root}")
    ds = ImageDataset(train, transform=lambda img: img.size)
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == len(ds) and ds.skipped == {bad}
    assert "unreadable" in caplog.text and "1 skipped" in caplog.text


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


def test_loader_order_depends_only_on_seed_and_epoch(tmp_path):
    root = make_imagefolder(tmp_path / "d")
    cfg = resolve_config(recipe="smoke", data=f"imagefolder:{root}")
    train, _, _ = make_loaders(cfg.data, 4, 8, seed=3)
    train.sampler.set_epoch(1)
    first = list(train.sampler)
    train.sampler.set_epoch(2)
    assert list(train.sampler) != first
    train.sampler.set_epoch(1)
    assert list(train.sampler) == first
    batch, target = next(iter(train))
    assert batch.shape == (4, 3, 32, 32) and target.shape == (4,)


def test_augmentations_in_this_process_do_not_depend_on_the_network(tmp_path):
    # the per-image path without workers runs timm's transforms on the global generators, which a network draws
    # from too (its init, drop path): seed k must still see the same crops and erasures whatever the network
    import torch

    root = make_imagefolder(tmp_path / "d")
    cfg = resolve_config(recipe="smoke", data=f"imagefolder:{root}",
                         overrides=["data.pipeline=pil", "data.workers=0", "data.random_erasing=1.0"])

    def epoch(draws_between: int):
        torch.manual_seed(0)
        train, _, _ = make_loaders(cfg.data, 4, 8, seed=3)
        train.set_epoch(1)
        torch.randn(draws_between)  # a network of another size initialises
        out = []
        for x, _ in train:
            out.append(x)
            torch.randn(draws_between)  # and draws its drop path between batches
        return out

    a, b = epoch(10), epoch(1000)
    assert len(a) == len(b) > 1 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_split_dataclass_is_plain():
    assert Split([], []).samples == []


@pytest.mark.parametrize("pipeline,workers", [("pil", 1), ("tensor", 0)])
def test_a_runs_summary_counts_the_images_it_left_out(tmp_path, monkeypatch, capsys, pipeline, workers):
    # a loader worker is a process of its own: what it skips must still reach the run's summary, once per image
    root = make_imagefolder(tmp_path / "d")
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(b"not a png")
    monkeypatch.setenv("ROADMAP_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{root}",
                 "--set", f"data.pipeline={pipeline}", "--set", f"data.workers={workers}",
                 "--results", str(tmp_path / "r"), "--experiment", "e"]) == 0
    run = tmp_path / "r" / "e" / "resnet50" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == 1
    assert any("1 image(s) left out" in note for note in summary["notes"])
    assert "1 image(s) left out (skipped.txt)" in capsys.readouterr().out  # the run's line says so too
    lines = (run / "skipped.txt").read_text().splitlines()
    assert {line.split("\t")[0] for line in lines} == {str(bad)}  # two epochs, one image
