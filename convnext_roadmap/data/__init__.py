"""The data a run trains on: sources (`--data`) → decoded images → augmented batches, by one of two pipelines.

`data.pipeline: pil` reads and augments each image with timm's transforms in loader workers (any set, the paper's
recipe); `tensor` decodes a small set once into a uint8 cache and augments whole batches as tensors (the CPU proxy).
Both take their order and every random draw from `order` (what seed k sees), and their batch augmentation from
`augment`; both loader factories take the same arguments.
"""

from __future__ import annotations

from .order import EpochSampler
from .pil import ImageDataset, eval_transform
from .sources import (IMAGE_EXTENSIONS, SkippedImages, Split, find_image, load_splits, make_subset, make_synthetic,
                      training_classes)

__all__ = ["IMAGE_EXTENSIONS", "EpochSampler", "ImageDataset", "SkippedImages", "Split", "augmentation_problem",
           "eval_transform", "find_image", "load_splits", "make_loaders", "make_subset", "make_synthetic",
           "training_classes"]


def augmentation_problem(data_cfg) -> str | None:
    """What the training augmentation's pipeline cannot read in `data_cfg` (its RandAugment spec), in words; None
    when it builds. The pre-flight asks (preflight.check_config), naming the file or --set it came from."""
    if data_cfg.pipeline == "tensor":
        from .augment import parse_rand_augment

        try:
            parse_rand_augment(data_cfg.auto_augment)
        except ValueError as e:
            return str(e)
        return None
    from .pil import transforms

    try:
        transforms(data_cfg)
    except (AssertionError, KeyError, ValueError) as e:  # timm's readers assert
        return f"got {data_cfg.auto_augment!r}, which timm cannot read ({e})"
    return None


def make_loaders(data_cfg, train_batch: int, eval_batch: int, seed: int, distributed: tuple[int, int] = (0, 1),
                 device=None, skipped: SkippedImages | None = None):
    """(train loader, val loader, class names). Both loaders yield (images, targets); the train loader's
    `set_epoch(e)` takes that epoch's order and augmentations from (seed, e, rank) as `order` promises, so that a
    resumed run sees the same batches as an uninterrupted one and seed k of every network sees the same data; the
    val loader is the rank's exact shard. Both pipelines' batches arrive on `device` (default: the CPU)
    normalized, made as uint8 and pinned ahead of use when the run trains on a GPU. Images that cannot be read or
    augmented are left out and go to `skipped`."""
    import torch

    from .tensor import tensor_loaders
    from .pil import image_loaders

    train_split, val_split = load_splits(data_cfg.source)
    make = tensor_loaders if data_cfg.pipeline == "tensor" else image_loaders
    device = device or torch.device("cpu")
    train, val = make(data_cfg, train_split, val_split, train_batch, eval_batch, seed, *distributed,
                      skipped or SkippedImages(), device)
    return train, val, train_split.classes
