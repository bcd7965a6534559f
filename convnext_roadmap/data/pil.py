"""The per-image path, for sets of any size: each image read and augmented by timm's transforms in loader workers."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform

from ..errors import RoadmapError
from ..rng import Streams
from .sources import EpochSampler, SkipRecord, Split

log = logging.getLogger(__name__)


class ImageDataset(torch.utils.data.Dataset):
    """Images from a list of (path, class). In training (`skip`), an image that cannot be read or augmented is
    skipped with a warning and recorded (`record`), the next one taking its place: a long run must not die on one
    bad file; but a set where nothing can be read is an error. Evaluation and prediction (`skip=False`) keep every
    image in its place, so that a bad one is an error naming it rather than a shifted row."""

    MAX_IN_A_ROW = 50

    def __init__(self, split: Split, transform, skip: bool = True, record: SkipRecord | None = None):
        self.samples, self.classes, self.transform, self.skip = split.samples, split.classes, transform, skip
        self.record = record or SkipRecord()
        self.skipped: set[Path] = set()  # in this process

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for offset in range(min(len(self.samples), self.MAX_IN_A_ROW)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                with Image.open(path) as img:
                    image = img.convert("RGB")
            except (OSError, ValueError) as e:
                self._skip(path, "unreadable", e)
                continue
            try:
                return self.transform(image), target
            except Exception as e:  # noqa: BLE001 - one augmentation's failure must not end a run
                self._skip(path, "could not augment", e)
        raise RoadmapError(f"{min(len(self.samples), self.MAX_IN_A_ROW)} images in a row could not be read or "
                           f"augmented (the last: {path})")

    def _skip(self, path: Path, why: str, error: Exception) -> None:
        if not self.skip:
            raise RoadmapError(f"{path}: {why} ({type(error).__name__}: {error})")
        if path not in self.skipped:
            self.record.add(path, f"{why} ({type(error).__name__}: {error})")
        self.skipped.add(path)
        log.warning("skipping image %s, %s (%s: %s); %d skipped so far", path, why, type(error).__name__, error,
                    len(self.skipped))


def transforms(data_cfg):
    """timm's training and evaluation transforms for a `data` config."""
    d = data_cfg
    train = create_transform(d.img_size, is_training=True, scale=tuple(d.crop_scale), hflip=0.5,
                             color_jitter=d.color_jitter, auto_augment=d.auto_augment, re_prob=d.random_erasing,
                             re_mode="pixel", interpolation=d.interpolation, mean=d.mean, std=d.std)
    for op in _augment_ops(train):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize
    return train, eval_transform(d)


def _augment_ops(transform):
    """timm's AugmentOps inside a transform: RandAugment's and AugMix's `ops`, AutoAugment's `policy`."""
    for t in getattr(transform, "transforms", [transform]):
        yield from getattr(t, "ops", [])
        for sub_policy in getattr(t, "policy", []):
            yield from sub_policy


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, for Pillow ≥ 13 too. RandAugment's increasing posterize asks for 0 bits at the top
    magnitude (m10, which rand-m9-mstd0.5 reaches in ~2% of draws); Pillow before 13 kept 0 bits (a black image),
    Pillow 13 raises "bits must be between or equal to 1 and 8". Keeping 0 bits as before keeps the paper's recipe."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def eval_transform(data_cfg):
    d = data_cfg
    return create_transform(d.img_size, is_training=False, crop_pct=d.crop_pct, interpolation=d.interpolation,
                            mean=d.mean, std=d.std)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochLoader(torch.utils.data.DataLoader):
    """A DataLoader whose order and whose workers' random streams are drawn from (seed, epoch): the same on every
    run of that seed, whatever the network, and again after a resume."""

    def __init__(self, dataset, batch_size: int, sampler: EpochSampler, seed: int, **kwargs):
        super().__init__(dataset, batch_size, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # each DDP rank (sampler.rank) draws its own augmentations
        self.generator.manual_seed(self.seed * 100_003 + epoch + 7 + self.sampler.rank * 7_919_000)

    def __iter__(self):
        if self.num_workers > 0:  # each worker's streams are seeded from the generator (_seed_worker)
            yield from super().__iter__()
            return
        # In this process timm's transforms draw from the global generators, which the network draws from too
        # (its init, drop path): they get streams of their own, seeded from (seed, epoch) as a worker's are.
        streams, batches = Streams(self.generator.initial_seed()), super().__iter__()
        while True:
            with streams:
                batch = next(batches, None)
            if batch is None:
                return
            yield batch


def image_loaders(data_cfg, train_split: Split, val_split: Split, train_batch: int, eval_batch: int, seed: int,
                  rank: int, world: int, skipped: SkipRecord):
    train_tf, val_tf = transforms(data_cfg)
    train_set = ImageDataset(train_split, train_tf, record=skipped)
    val_set = ImageDataset(val_split, val_tf, record=skipped)
    val_sampler = torch.utils.data.distributed.DistributedSampler(val_set, world, rank, shuffle=False) \
        if world > 1 else None
    common = dict(num_workers=data_cfg.workers, worker_init_fn=_seed_worker, pin_memory=torch.cuda.is_available())
    train = EpochLoader(train_set, train_batch, EpochSampler(len(train_set), seed, rank, world), seed,
                        drop_last=True, **common)
    val = torch.utils.data.DataLoader(val_set, eval_batch, sampler=val_sampler, **common)
    return train, val
