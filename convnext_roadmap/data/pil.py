"""The per-image path, for sets of any size: each image read and augmented by timm's transforms in loader workers,
as uint8; normalized and randomly erased on the device the run trains on, as timm's prefetcher does."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from PIL import Image, ImageOps
from timm.data import create_transform

from ..errors import RoadmapError
from ..rng import restored, seed_cpu
from .augment import DeviceBatches
from .order import EpochSampler, EvalShard, ImageSeeds
from .sources import SkippedImages, Split

log = logging.getLogger(__name__)


class ImageDataset(torch.utils.data.Dataset):
    """Images from a list of (path, class). In training (`skip`), an image that cannot be read or augmented is
    skipped with a warning and written to `skipped_images`, the next one taking its place: a long run must not die
    on one bad file; but a set where nothing can be read is an error. Evaluation and prediction (`skip=False`) keep
    every image in its place, so that a bad one is an error naming it rather than a shifted row."""

    MAX_IN_A_ROW = 50

    def __init__(self, split: Split, transform, skip: bool = True, skipped_images: SkippedImages | None = None):
        self.samples, self.classes, self.transform, self.skip = split.samples, split.classes, transform, skip
        self.skipped_images = skipped_images or SkippedImages()
        self.skipped: set[Path] = set()  # in this process

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        """`item`: an index, or (index, seed) from an `order.ImageSeeds` sampler (the image's draws seeded first)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            seed_cpu(seed)
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
            self.skipped_images.add(path, f"{why} ({type(error).__name__}: {error})")
        self.skipped.add(path)
        log.warning("skipping image %s, %s (%s: %s); %d skipped so far", path, why, type(error).__name__, error,
                    len(self.skipped))


def transforms(data_cfg, uint8: bool = False):
    """timm's training and evaluation transforms for a `data` config. `uint8`: as timm's prefetcher takes them (uint8
    tensors, not normalized, no random erasing: the device does those, `DeviceBatches`)."""
    d = data_cfg
    train = create_transform(d.img_size, is_training=True, scale=tuple(d.crop_scale), hflip=0.5,
                             color_jitter=d.color_jitter, auto_augment=d.auto_augment, re_prob=d.random_erasing,
                             re_mode="pixel", interpolation=d.interpolation, mean=d.mean, std=d.std,
                             use_prefetcher=uint8)
    for op in _augment_ops(train):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize
    return train, eval_transform(d, uint8)


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


def eval_transform(data_cfg, uint8: bool = False):
    d = data_cfg
    return create_transform(d.img_size, is_training=False, crop_pct=d.crop_pct, interpolation=d.interpolation,
                            mean=d.mean, std=d.std, use_prefetcher=uint8)


class EpochLoader(torch.utils.data.DataLoader):
    """A DataLoader of `order.ImageSeeds`: its order and its images' random draws come from (seed, epoch, rank),
    the same on every run of that seed, whatever the network, and again after a resume, also one in the middle of an
    epoch (`position`: the batches given so far; its length stays the epoch's)."""

    first, position = 0, None  # the batch the epoch goes on from; where the last one given leaves it

    def set_epoch(self, epoch: int, position: dict | None = None) -> None:
        # each DDP rank (sampler.rank) draws its own augmentations; the draws of an image are its place's
        self.first = position["batch"] if position else 0
        self.sampler.set_epoch(epoch, self.first * self.batch_size)

    def __iter__(self):
        batches = super().__iter__()
        for i in itertools.count(self.first):
            if self.num_workers > 0:
                batch = next(batches, None)
            else:
                # In this process the draws reseed the global CPU generators, which the network draws from too (its
                # init, drop path): they are put back after each batch.
                with restored():
                    batch = next(batches, None)
            if batch is None:
                return
            self.position = {"batch": i + 1}
            yield batch


def leave_stops_to_the_run(_worker: int) -> None:
    """A loader worker ignores the stop signals (Ctrl-C at a terminal, SLURM's to every process of a job step): the
    run's own process saves its place and ends its workers; one killed or stopped by them would end the run."""
    import signal

    from ..processes import stop_signals

    for signum in stop_signals():
        signal.signal(signum, signal.SIG_IGN)


def image_loaders(data_cfg, train_split: Split, val_split: Split, train_batch: int, eval_batch: int, seed: int,
                  rank: int, world: int, skipped: SkippedImages, device: torch.device = torch.device("cpu")):
    from timm.data.loader import fast_collate

    from ..device import loader_workers

    train_tf, val_tf = transforms(data_cfg, uint8=True)
    train_set = ImageDataset(train_split, train_tf, skipped_images=skipped)
    # every validation image counted once, in its place: an unreadable one is an error naming it, not replaced
    val_set = ImageDataset(val_split, val_tf, skip=False)
    workers = loader_workers(data_cfg.workers)
    # uint8 through the workers' shared memory (a quarter of float32's bytes), pinned for an asynchronous copy;
    # both loaders keep their workers between epochs (as timm's do), not forked again for each
    common = dict(num_workers=workers, collate_fn=fast_collate, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0, worker_init_fn=leave_stops_to_the_run)
    # a generator of their own: a loader starting its workers draws their base seed from it, and from the global
    # stream otherwise, which would shift the network's draws by whether (and when) the workers were started
    train = EpochLoader(train_set, train_batch, sampler=ImageSeeds(EpochSampler(len(train_set), seed, rank, world)),
                        drop_last=True, generator=torch.Generator(), **common)
    # every image counted once under any number of processes (DistributedSampler's padding counts some twice)
    val = torch.utils.data.DataLoader(val_set, eval_batch, sampler=EvalShard(len(val_set), rank, world),
                                      generator=torch.Generator(), **common)
    return (DeviceBatches(train, data_cfg, device, seed, rank, data_cfg.random_erasing),
            DeviceBatches(val, data_cfg, device))
