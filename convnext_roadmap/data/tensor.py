"""The tensor path, for sets small enough to hold in memory: every image decoded once into a uint8 tensor (kept in
the cache folder), and training batches augmented as tensors, a batch at a time (`augment.BatchAugment`).

Each image is kept as the centre square that evaluation crops from (img_size / crop_pct); training crops are drawn
from that square, so for non-square images, or crop_pct < 1, they never reach the borders that timm's crops of the
whole image would. For the synthetic set (square, crop_pct 1) the two are the same.

The per-image path (pil.py) spends more time in PIL than a small proxy network spends training; here a batch of
64 costs a few milliseconds. For a GPU run, batches leave here as uint8, pinned, and are normalized and randomly
erased on the GPU by `augment.DeviceBatches`, as the per-image path's are; a CPU run's are normalized and erased
here. Its order and draws are `order`'s, so seed k of every step sees the same crops, flips, ops and erasures.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from ..errors import RoadmapError
from ..resources import atomic_write, cache_dir
from .augment import BatchAugment, DeviceBatches
from .order import EpochSampler, EvalShard, Purpose, batch_generator
from .sources import SkippedImages, Split

log = logging.getLogger(__name__)
STORE_VERSION = 2  # 2: the unreadable files are kept beside the tensors
_DECODE_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------ the decoded images

def stored_size(data_cfg) -> int:
    """The side each image is kept at: timm's evaluation resize (img_size / crop_pct), so that evaluation is a
    centre crop of what is stored and training crops come from the same pixels."""
    return math.floor(data_cfg.img_size / data_cfg.crop_pct)


def _decode_one(path: Path, size: int, resample: str) -> torch.Tensor:
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resample])
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def decode(split: Split, size: int, resample: str = "bicubic") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image of a split, resized (shorter side, antialiased) and centre-cropped to size × size, as
    (uint8 N×3×size×size, int64 targets, the unreadable files left out with a warning)."""
    images, targets, skipped = [], [], []
    for path, target in split.samples:
        try:
            images.append(_decode_one(path, size, resample))
        except (OSError, ValueError) as e:
            skipped.append(f"{path}\tunreadable ({type(e).__name__}: {e})")
            log.warning("skipping unreadable image %s (%s); %d skipped so far", path, e, len(skipped))
            continue
        targets.append(target)
    if not images:
        raise RoadmapError("no readable image in the data set")
    return torch.stack(images), torch.tensor(targets), skipped


def cached(split: Split, size: int, resample: str = "bicubic") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`decode`, kept in the cache folder under a key made of the files (path, size, mtime) and the size: a set
    is decoded once, and again only when a file changes."""
    digest = hashlib.sha1(f"v{STORE_VERSION}|{size}|{resample}".encode())
    for path, target in split.samples:
        st = os.stat(path) if os.path.exists(path) else None
        digest.update(f"{path}|{target}|{st and st.st_size}|{st and st.st_mtime_ns}\n".encode())
    path = cache_dir() / "decoded" / f"{digest.hexdigest()}.pt"
    with _DECODE_LOCK:
        try:
            images, targets, skipped = torch.load(path, weights_only=True)
            return images, targets, skipped
        except (OSError, RuntimeError, ValueError, EOFError):
            pass
        decoded = decode(split, size, resample)
        atomic_write(path, lambda f: torch.save(decoded, f))
        return decoded


# ------------------------------------------------------------------------------------------------- loaders

class TensorLoader:
    """uint8 batches of a decoded set in the order of a sampler (an EpochSampler, or an EvalShard); training batches
    augmented with the draws of `order.batch_generator`, evaluation batches a centre crop. With `pin` (a run on a
    GPU), the next batch is made and pinned in a thread while the current one trains, so that its copy to the GPU
    overlaps the step (`augment.DeviceBatches` copies, normalizes and erases, as for the per-image pipeline)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, sampler, seed: int,
                 augment: BatchAugment | None = None, crop: int | None = None, drop_last: bool = True,
                 pin: bool = False, rank: int = 0, mean=None, std=None):
        self.images, self.targets, self.batch_size, self.sampler = images, targets, batch_size, sampler
        self.seed, self.augment, self.crop, self.drop_last, self.pin = seed, augment, crop, drop_last, pin
        self.rank = rank  # each DDP rank draws its own augmentations
        # evaluation crops normalized here (a CPU run), or left uint8 for the device to normalize (a GPU run)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) if mean is not None else None
        self.std = torch.tensor(std).view(1, 3, 1, 1) if std is not None else None
        self.epoch, self.start, self.position = 0, None, None

    def set_epoch(self, epoch: int, position: dict | None = None) -> None:
        """The epoch to give, from its first batch or from `position` (a `position` of this loader's)."""
        self.epoch, self.start = epoch, position
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _batch(self, idx: torch.Tensor, g: torch.Generator):
        """(images, targets, the augmentation stream's state after them)."""
        x = self.images[idx]
        if self.augment is not None:
            x = self.augment(x, g)
        else:
            side, c = x.shape[-1], self.crop
            top = int(round((side - c) / 2))
            x = x[:, :, top:top + c, top:top + c].contiguous()
            if self.mean is not None:
                x = (x.float() / 255 - self.mean) / self.std
        y = self.targets[idx]
        after = g.get_state() if self.augment is not None else None
        return ((x.pin_memory(), y.pin_memory()) if self.pin else (x, y)), after

    def __iter__(self):
        """The epoch's batches from its first, or from the position `set_epoch` gave; after each, `position` says
        where the next begins: its index and the augmentation stream's state (made ahead, a batch has its own)."""
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        g = batch_generator(self.seed, self.epoch, self.rank, Purpose.TENSOR_AUGMENT)
        first = 0
        if self.start is not None:
            first = self.start["batch"]
            if self.start.get("augment") is not None:
                g.set_state(self.start["augment"])
            self.start = None
        batches = [order[i:i + self.batch_size] for i in range(0, len(self) * self.batch_size, self.batch_size)]
        if not self.pin:
            made = (self._batch(idx, g) for idx in batches[first:])
        else:
            made = self._ahead(batches[first:], g)
        for i, (batch, after) in enumerate(made, first):
            self.position = {"batch": i + 1, "augment": after}
            yield batch

    def _ahead(self, batches: list, g: torch.Generator):
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._batch, batches[0], g) if batches else None
            for i in range(len(batches)):
                ready = pending.result()
                pending = pool.submit(self._batch, batches[i + 1], g) if i + 1 < len(batches) else None
                yield ready


def tensor_loaders(data_cfg, train_split: Split, val_split: Split, train_batch: int, eval_batch: int, seed: int,
                   rank: int, world: int, skipped: SkippedImages, device: torch.device = torch.device("cpu")):
    """(train, val) loaders of the decoded set, their batches normalized (and the training ones erased): on the CPU
    as they are made; on a GPU, each made as uint8 and pinned in a thread ahead of its use, then on the GPU."""
    size, resample = stored_size(data_cfg), data_cfg.interpolation
    images, targets, unreadable = cached(train_split, size, resample)
    val_images, val_targets, val_unreadable = cached(val_split, size, resample)
    if val_unreadable:  # every validation image counted: one left out would change what top-1 is of
        path, why = val_unreadable[0].split("\t", 1)
        raise RoadmapError(f"{path}: {why}: a validation image must be readable (training images are skipped)")
    for line in unreadable if rank == 0 else []:  # every rank decodes the same files
        skipped.add(*line.split("\t", 1))
    gpu = device.type == "cuda"
    train = TensorLoader(images, targets, train_batch, EpochSampler(len(images), seed, rank, world), seed,
                         augment=BatchAugment(data_cfg, uint8=gpu), pin=gpu, rank=rank)
    normalized = {} if gpu else {"mean": data_cfg.mean, "std": data_cfg.std}
    val = TensorLoader(val_images, val_targets, eval_batch, EvalShard(len(val_images), rank, world), seed,
                       crop=data_cfg.img_size, drop_last=False, pin=gpu, **normalized)
    if not gpu:  # a CPU run trains where the batch is made: no copy to overlap, normalized and erased here
        return train, val
    return (DeviceBatches(train, data_cfg, device, seed, rank, data_cfg.random_erasing),
            DeviceBatches(val, data_cfg, device))
