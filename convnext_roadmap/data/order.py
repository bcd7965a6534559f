"""What seed k sees: every random draw of the data, from (seed, epoch, rank, purpose), and each process's exact share
of the evaluation set. The one home of that contract; the pipelines (`pil`, `tensor`, and any later one) ask here.

The contract, which the blocked analysis rests on (docs/statistics.md): on one data set, seed k of every network —
whatever the step, the executor, the number of loader workers, and before or after a resume — trains on

- the same **order** of each epoch e: one permutation of the training set drawn from `epoch_key(seed, e)`; rank r
  of w processes takes the r-th of w equal slices (the n mod w left over sit out that epoch);
- the same **draws of each image** in the per-image pipeline (crop, flip, RandAugment): its worker reseeds from
  `image_seed(seed, e, rank, place)`, `place` the image's position in the rank's epoch;
- the same **draws of each batch** (the tensor pipeline's whole augmentation; the per-image pipeline's erasing
  boxes and their noise): a generator per (seed, e, rank) and `Purpose`, from `batch_generator`;

A run stopped in the middle of an epoch goes on from its next batch with all of these as they were: each loader
reports its `position` after the batch it last gave (its place, and its batch streams' states) and takes it back
with `set_epoch(epoch, position)`; an image's draws depend on its place alone.

and is **evaluated** on every image once: `eval_shard` gives rank r every w-th image from r, none repeated, so top-1
and the loss summed over the ranks are the same under any number of processes.

The network's own draws (its initial weights, drop path, mixup) come from the global streams (`rng`), which nothing
here touches. The numbers below are those the runs have always used, under names: changing one changes every run.
"""

from __future__ import annotations

import itertools
from enum import IntEnum

import torch

EPOCH_STRIDE = 100_003  # epoch_key: seed × EPOCH_STRIDE + epoch
RANK_STRIDE = 7_919_000  # a batch stream's key: + rank × RANK_STRIDE
IMAGE_RANK_STRIDE = 65_537  # an image's seed: (epoch_key × IMAGE_RANK_STRIDE + rank) << IMAGE_PLACE_BITS, + place
IMAGE_PLACE_BITS = 24  # room for 16.7 M images per rank and epoch


class Purpose(IntEnum):
    """The batch streams, each an offset from its epoch's key, so that no two purposes share draws."""

    TENSOR_AUGMENT = 11  # the tensor pipeline: crop and flip, RandAugment, erasing, per batch
    ERASING_BOXES = 13  # the per-image pipeline's erasing on the device: which samples, which boxes (on the CPU)
    ERASING_NOISE = 14  # … and the noise that fills them (on the device)


def epoch_key(seed: int, epoch: int) -> int:
    return seed * EPOCH_STRIDE + epoch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the n training images in epoch `epoch` of seed `seed`, before it is split across ranks."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_key(seed, epoch))).tolist()


def image_seed(seed: int, epoch: int, rank: int, place: int) -> int:
    """The seed of the draws of the image at `place` in rank `rank`'s share of the epoch."""
    base = (epoch_key(seed, epoch) * IMAGE_RANK_STRIDE + rank) << IMAGE_PLACE_BITS
    return (base + place) % 2**63


def batch_generator(seed: int, epoch: int, rank: int, purpose: Purpose,
                    device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` for one purpose's draws over rank `rank`'s batches of the epoch, in batch order."""
    key = epoch_key(seed, epoch) + int(purpose) + rank * RANK_STRIDE
    return torch.Generator(device=device).manual_seed(key)


class EpochSampler(torch.utils.data.Sampler):
    """A rank's share of the training order of each epoch (`set_epoch` chooses which); the same on every machine."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        per_rank = self.n // self.world
        return iter(epoch_order(self.n, self.seed, self.epoch)[self.rank * per_rank:(self.rank + 1) * per_rank])

    def __len__(self) -> int:
        return self.n // self.world


class ImageSeeds:
    """An EpochSampler whose indices come with their image's seed, (index, image_seed(…)): an image's draws are the
    same whichever loader worker makes it, with any number of workers, persistent or not, and after a resume.
    `start`: the place the epoch goes on from (a run resumed in its middle); its length is still the epoch's."""

    def __init__(self, sampler: EpochSampler):
        self.sampler, self.start = sampler, 0

    @property
    def rank(self) -> int:
        return self.sampler.rank

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        s = self.sampler
        for place, index in itertools.islice(enumerate(s), self.start, None):
            yield index, image_seed(s.seed, s.epoch, s.rank, place)


class EvalShard(torch.utils.data.Sampler):
    """Rank `rank`'s share of an evaluation set of n images: every `world`-th from `rank`. The ranks together see
    each image exactly once (torch's DistributedSampler pads the shares with repeats, which would count them twice)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
