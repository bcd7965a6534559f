"""data/tensor.py: the decoded cache gives the same batches as reading the files; evaluation crops are timm's;
on a GPU run each uint8 batch is pinned in the prefetch thread."""

import threading

import torch
from PIL import Image

from convnext_roadmap.data import eval_transform, load_splits, make_loaders
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
    _, val_split = load_splits(data.source)
    _, val, _ = make_loaders(data, 8, 100, seed=0)
    (x, y), = list(val)
    timm_tf = eval_transform(data)
    expected = torch.stack([timm_tf(Image.open(p).convert("RGB")) for p, _ in val_split.samples])
    assert y.tolist() == [t for _, t in val_split.samples] and x.dtype == torch.float32
    assert (x - expected).abs().mean() < 0.02  # a rounding step apart (1/255 ÷ std)


def test_a_gpu_runs_batches_are_uint8_pinned_in_the_prefetch_thread(synthetic, tmp_path, monkeypatch):
    # pinned memory makes the copy to the GPU asynchronous (from pageable memory non_blocking does nothing), and
    # uint8 is a quarter of float32's bytes; pinning in the thread keeps it off the training loop's time
    monkeypatch.setenv("ROADMAP_CACHE", str(tmp_path))
    data = proxy_data(synthetic)
    train, _ = load_splits(data.source)
    images, targets, _ = cached(train, stored_size(data))
    pinned_in = []

    def pin_memory(t, *args):  # the CPU has no pinned memory to give: record where it was asked for
        pinned_in.append((threading.current_thread() is threading.main_thread(), t.dtype))
        return t

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    loader = TensorLoader(images, targets, 8, EpochSampler(len(images), 0), 0, augment=BatchAugment(data, uint8=True),
                          pin=True)
    batches = list(loader)
    assert len(batches) == 60 // 8 and all(x.dtype == torch.uint8 for x, _ in batches)
    assert pinned_in == [(False, torch.uint8), (False, torch.int64)] * len(batches)
    unpinned = TensorLoader(images, targets, 8, EpochSampler(len(images), 0), 0, augment=BatchAugment(data, uint8=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, unpinned)) and len(pinned_in) == 2 * len(batches)
