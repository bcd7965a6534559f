"""CPU time per training image of the paper's input path at 224², three ways side by side in one process, on the
same photo-sized JPEGs: before (issue 20: float32 normalized and erased in the workers, default collate), ours now
(uint8 in the workers, normalized and erased on the device) and timm's create_loader (its prefetcher).

    python docs/bench/input_path.py [--images 256] [--data imagefolder:PATH]

The worker's share is what a loader worker spends per image, the part that a GPU machine's CPUs pay; the device
share is what normalization and erasing cost where they run (here on the CPU; on a GPU, GPU time). Rounds alternate
between the three, and each figure is the median of its rounds."""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from timm.data import create_loader
from timm.data.loader import fast_collate

from convnext_roadmap.data import SkippedImages, load_splits
from convnext_roadmap.data.pil import DeviceBatches, ImageDataset, transforms
from convnext_roadmap.doctor import jpegs
from convnext_roadmap.roadmap import resolve_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--data", help="imagefolder:PATH (default: generated 500×375 JPEGs)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker is one thread
    logging.disable(logging.WARNING)  # timm's own posterize fails on Pillow 13 now and then: that image is skipped
    spec = args.data or jpegs(Path(tempfile.mkdtemp()) / "photos", classes=2, train=args.images // 2, val=1)
    d = resolve_config(recipe="paper_in1k", data=spec, overrides=["data.workers=0"]).data
    split, _ = load_splits(spec)
    split.samples = split.samples[:args.images]
    n, batch, cpu = len(split.samples), 64, torch.device("cpu")

    before_tf, _ = transforms(d)  # what the workers ran before: timm's float transform, normalized and erased
    after_tf, _ = transforms(d, uint8=True)

    def worker(transform, collate, seeded: bool):
        ds = ImageDataset(split, transform, skipped_images=SkippedImages())
        items = [ds[(i, i)] if seeded else ds[i] for i in range(n)]
        return [collate(items[i:i + batch]) for i in range(0, n - batch + 1, batch)]

    def before():
        return worker(before_tf, torch.utils.data.default_collate, False), None

    def ours():
        batches = worker(after_tf, fast_collate, True)
        device = DeviceBatches(batches, d, cpu, erasing=d.random_erasing)
        start = time.process_time()
        list(device)
        return batches, time.process_time() - start

    def timms():
        loader = create_loader(ImageDataset(split, None, skipped_images=SkippedImages()), (3, 224, 224), batch,
                               is_training=True, use_prefetcher=True, scale=tuple(d.crop_scale), hflip=0.5,
                               auto_augment=d.auto_augment, re_prob=d.random_erasing, re_mode="pixel",
                               interpolation=d.interpolation, mean=tuple(d.mean), std=tuple(d.std), num_workers=0,
                               device=cpu)
        list(loader)
        return None, None

    spent = {f: [] for f in (before, ours, timms)}
    device_s = []
    for _ in range(args.rounds):
        for f in spent:
            start = time.process_time()
            _, on_device = f()
            spent[f].append(time.process_time() - start)
            if on_device is not None:
                device_s.append(on_device)
    per = {f.__name__: 1000 * statistics.median(s) / n for f, s in spent.items()}
    on_device = 1000 * statistics.median(device_s) / n
    print(f"# {n} images of {spec}, 224², rand-m9-mstd0.5-inc1 + erasing 0.25, 1 thread, median of {args.rounds}")
    print(f"before (float32 in the worker):      {per['before']:.2f} ms/image, all in the worker")
    print(f"ours (uint8, device normalizes):     {per['ours']:.2f} ms/image: worker {per['ours'] - on_device:.2f}, "
          f"device side {on_device:.2f} (on this CPU)")
    print(f"timm create_loader (prefetcher):     {per['timms']:.2f} ms/image, worker and device side")
    print(f"a worker's CPU per image, before / ours: {per['before'] / (per['ours'] - on_device):.2f}×; "
          f"the whole path here, timm's / ours: {per['timms'] / per['ours']:.2f}×")


if __name__ == "__main__":
    main()
