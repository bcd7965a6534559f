"""data/pil.py: the per-image path — timm's transforms in loader workers, unreadable images skipped and counted,
evaluation batches timm's, erasing on the device."""

import logging

import torch

from convnext_roadmap import resolve_config
from convnext_roadmap.data import ImageDataset, load_splits, make_loaders

from conftest import epoch_batches, make_imagefolder


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


def test_an_images_draws_are_its_own_whatever_the_workers(tmp_path):
    # each image's crop, flip and RandAugment draws come from (seed, epoch, its place): the same with no worker,
    # with two (persistent) ones, and from a loader made afresh for that epoch, as a resumed run makes it
    root = make_imagefolder(tmp_path / "d")
    common = ["data.pipeline=pil", "data.random_erasing=0.5"]
    alone = resolve_config(recipe="smoke", data=f"imagefolder:{root}", overrides=[*common, "data.workers=0"])
    two = resolve_config(recipe="smoke", data=f"imagefolder:{root}", overrides=[*common, "data.workers=2"])
    a, b = epoch_batches(alone), epoch_batches(two)
    assert len(a) == len(b) > 1 and all(torch.equal(x, y) for x, y in zip(a, b))
    train, val, _ = make_loaders(two.data, 4, 8, seed=3)
    assert train.loader.persistent_workers and train.loader.num_workers == 2
    assert val.loader.persistent_workers  # the evaluation's workers are not forked again at every evaluation
    assert next(iter(train.loader))[0].dtype == torch.uint8  # through the workers' shared memory; floats after
    for epoch in (0, 1):  # the workers kept from epoch 0 make epoch 1 as fresh ones do
        train.set_epoch(epoch)
        batches = [x for x, _ in train]
    assert all(torch.equal(x, y) for x, y in zip(batches, a)) and not torch.equal(epoch_batches(two, 2)[0], a[0])


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
    kept = epoch_batches(resolve_config(recipe="smoke", data=f"imagefolder:{root}",
                                 overrides=[*common, "data.random_erasing=0"]))
    erased = epoch_batches(resolve_config(recipe="smoke", data=f"imagefolder:{root}",
                                   overrides=[*common, "data.random_erasing=1.0"]))
    for x, y in zip(kept, erased):  # the same crops: only the boxes differ
        changed = (x != y).any(1)  # N×H×W
        share = changed.flatten(1).float().mean(1)
        assert ((share > 0.015) & (share <= 1 / 3 + 0.01)).all()
        rows, cols = changed.any(2), changed.any(1)  # a box: its bounding rectangle is all changed
        assert torch.equal(rows.sum(1) * cols.sum(1), changed.flatten(1).sum(1))
