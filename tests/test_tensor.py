"""data/tensor.py: the decoded cache gives the same batches as reading the files; evaluation crops are timm's."""

import torch
from PIL import Image

from convnext_roadmap.data import eval_transform, load_splits
from convnext_roadmap.data.augment import BatchAugment
from convnext_roadmap.data.order import EpochSampler
from convnext_roadmap.data.tensor import TensorLoader, cached, decode, stored_size

from conftest import proxy_data


def _batches(images, targets, data, seed, epochs=2):
    loader = TensorLoader(images, targets, 8, EpochSampler(len(images), seed), seed, augment=BatchAugment(data))
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out += list(loader)
    return out


def test_the_cache_gives_the_same_batches_as_the_files(synthetic, monkeypatch, tmp_path):
    monkeypatch.setenv("ROADMAP_CACHE", str(tmp_path))
    data = proxy_data(synthetic)
    train, _ = load_splits(data.source)
    from_files = decode(train, stored_size(data))
    cached(train, stored_size(data))  # writes the cache
    from_cache = cached(train, stored_size(data))  # reads it
    assert list((tmp_path / "decoded").glob("*.pt"))
    assert from_files[2] == from_cache[2] == []  # no unreadable files
    a, b = _batches(*from_files[:2], data, seed=1), _batches(*from_cache[:2], data, seed=1)
    assert len(a) == 2 * (60 // 8)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = _batches(*from_cache[:2], data, seed=2)
    assert not torch.equal(a[0][0], other[0][0])  # another seed, other crops


def test_evaluation_batches_are_timms_centre_crop(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("ROADMAP_CACHE", str(tmp_path))
    data = proxy_data(synthetic, "data.img_size=32", "data.crop_pct=0.875")
    _, val = load_splits(data.source)
    images, targets, _ = cached(val, stored_size(data), data.interpolation)
    loader = TensorLoader(images, targets, 100, range(len(images)), 0, crop=32, mean=data.mean, std=data.std,
                          drop_last=False)
    (x, y), = list(loader)
    timm_tf = eval_transform(data)
    expected = torch.stack([timm_tf(Image.open(p).convert("RGB")) for p, _ in val.samples])
    assert y.tolist() == [t for _, t in val.samples]
    assert (x - expected).abs().mean() < 0.02  # a rounding step apart (1/255 ÷ std)


