import hashlib
import json
import logging

import pytest
import torch

from convnext_roadmap import RoadmapError, resolve_config
from convnext_roadmap.cli import main
from convnext_roadmap.data import ImageDataset, load_splits, make_loaders, make_synthetic

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


def _epoch(cfg, epoch=1, seed=3):
    train, _, _ = make_loaders(cfg.data, 4, 8, seed=seed)
    train.set_epoch(epoch)
    return [x for x, _ in train]


def test_an_images_draws_are_its_own_whatever_the_workers(tmp_path):
    # each image's crop, flip and RandAugment draws come from (seed, epoch, its place): the same with no worker,
    # with two (persistent) ones, and from a loader made afresh for that epoch, as a resumed run makes it
    root = make_imagefolder(tmp_path / "d")
    common = ["data.pipeline=pil", "data.random_erasing=0.5"]
    alone = resolve_config(recipe="smoke", data=f"imagefolder:{root}", overrides=[*common, "data.workers=0"])
    two = resolve_config(recipe="smoke", data=f"imagefolder:{root}", overrides=[*common, "data.workers=2"])
    a, b = _epoch(alone), _epoch(two)
    assert len(a) == len(b) > 1 and all(torch.equal(x, y) for x, y in zip(a, b))
    train, _, _ = make_loaders(two.data, 4, 8, seed=3)
    assert train.loader.persistent_workers and train.loader.num_workers == 2
    assert next(iter(train.loader))[0].dtype == torch.uint8  # through the workers' shared memory; floats after
    for epoch in (0, 1):  # the workers kept from epoch 0 make epoch 1 as fresh ones do
        train.set_epoch(epoch)
        batches = [x for x, _ in train]
    assert all(torch.equal(x, y) for x, y in zip(batches, a)) and not torch.equal(_epoch(two, 2)[0], a[0])


def test_evaluation_batches_are_timms_normalized_images(tmp_path):
    # uint8 from the workers, normalized where the run trains: the same numbers as timm's own float transform
    from timm.data import create_transform

    root = make_imagefolder(tmp_path / "d")
    cfg = resolve_config(recipe="smoke", data=f"imagefolder:{root}", overrides=["data.pipeline=pil"])
    d = cfg.data
    _, val, _ = make_loaders(d, 4, 8, seed=3)
    timm_tf = create_transform(d.img_size, is_training=False, crop_pct=d.crop_pct, interpolation=d.interpolation,
                               mean=d.mean, std=d.std)
    _, val_split = load_splits(d.source)
    x, y = next(iter(val))
    expected = torch.stack([timm_tf(__import__("PIL.Image").Image.open(p).convert("RGB"))
                            for p, _ in val_split.samples[:len(x)]])
    assert x.dtype == torch.float32 and y.tolist() == [t for _, t in val_split.samples[:len(x)]]
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)


def test_random_erasing_on_the_device_erases_one_box_of_2_to_33_percent(tmp_path):
    root = make_imagefolder(tmp_path / "d", size=48)
    common = ["data.pipeline=pil", "data.workers=0", "data.img_size=40", "data.auto_augment=null"]
    kept = _epoch(resolve_config(recipe="smoke", data=f"imagefolder:{root}",
                                 overrides=[*common, "data.random_erasing=0"]))
    erased = _epoch(resolve_config(recipe="smoke", data=f"imagefolder:{root}",
                                   overrides=[*common, "data.random_erasing=1.0"]))
    for x, y in zip(kept, erased):  # the same crops: only the boxes differ
        changed = (x != y).any(1)  # N×H×W
        share = changed.flatten(1).float().mean(1)
        assert ((share > 0.015) & (share <= 1 / 3 + 0.01)).all()
        rows, cols = changed.any(2), changed.any(1)  # a box: its bounding rectangle is all changed
        assert torch.equal(rows.sum(1) * cols.sum(1), changed.flatten(1).sum(1))


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
