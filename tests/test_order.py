"""data/order.py: what seed k sees — the epoch order, the draws' seeds, the exact evaluation shard."""

import json
import os
import subprocess
import sys

import pytest
import torch

from convnext_roadmap import resolve_config
from convnext_roadmap.data import make_loaders

from convnext_roadmap.data.order import (EpochSampler, EvalShard, ImageSeeds, Purpose, batch_generator, epoch_order,
                                         image_seed)

from conftest import make_imagefolder


def test_the_epoch_order_is_torchs_permutation_of_the_seed_and_epoch_key():
    # the key the runs have always used, written out: seed × 100,003 + epoch
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + 2)).tolist()
    assert epoch_order(10, seed=3, epoch=2) == expected
    assert epoch_order(10, 3, 2) != epoch_order(10, 3, 1)


def test_ranks_take_equal_disjoint_slices_of_one_order():
    order = epoch_order(11, 5, 0)
    shares = []
    for rank in range(3):
        s = EpochSampler(11, 5, rank, 3)
        s.set_epoch(0)
        shares.append(list(s))
    assert shares == [order[0:3], order[3:6], order[6:9]]  # 11 // 3 each; the 2 left over sit out this epoch
    assert len(EpochSampler(11, 5, 2, 3)) == 3


def test_an_images_seed_is_its_place_in_the_ranks_epoch():
    s = ImageSeeds(EpochSampler(6, 1, rank=1, world=2))
    s.set_epoch(4)
    base = ((1 * 100_003 + 4) * 65_537 + 1) << 24  # written out by hand
    assert list(s) == [(i, base + place) for place, i in enumerate(epoch_order(6, 1, 4)[3:6])]
    assert image_seed(1, 4, 1, 2) == base + 2


def test_each_purpose_draws_from_its_own_stream():
    def draws(purpose, rank=0):
        return torch.rand(4, generator=batch_generator(2, 1, rank, purpose)).tolist()

    key = 2 * 100_003 + 1
    assert draws(Purpose.TENSOR_AUGMENT) == torch.rand(4, generator=torch.Generator().manual_seed(key + 11)).tolist()
    assert draws(Purpose.ERASING_BOXES, rank=1) == torch.rand(
        4, generator=torch.Generator().manual_seed(key + 13 + 7_919_000)).tolist()
    assert draws(Purpose.ERASING_NOISE) == torch.rand(4, generator=torch.Generator().manual_seed(key + 14)).tolist()
    assert len({tuple(draws(p)) for p in Purpose}) == len(Purpose)


@pytest.mark.parametrize("n, world", [(10, 3), (10, 4), (2, 3), (7, 1)])
def test_the_evaluation_shards_cover_every_image_once(n, world):
    seen = [i for rank in range(world) for i in EvalShard(n, rank, world)]
    assert sorted(seen) == list(range(n))


_EVALUATE = """
import datetime, json, sys
import torch, torch.distributed as dist
from convnext_roadmap import resolve_config
from convnext_roadmap.data import make_loaders
from convnext_roadmap.train.loop import Trainer
rank, world, init, data, pipeline = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if world > 1:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
cfg = resolve_config(recipe="smoke", data=f"imagefolder:{data}",
                     overrides=[f"data.pipeline={pipeline}", "data.workers=0", "data.img_size=24"])
torch.manual_seed(0)  # the same network on every rank
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(4, 2))
trainer = Trainer.__new__(Trainer)
trainer.model, trainer.world, trainer.device, trainer.amp, trainer.cfg = model, world, torch.device("cpu"), None, cfg
trainer.classes = ["a", "b"]
trainer.val_loader = make_loaders(cfg.data, 4, 3, 0, (rank, world))[1]
print(json.dumps(trainer.evaluate(model)))
if world > 1:
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
def test_top1_and_loss_are_the_same_under_any_number_of_processes(tmp_path, pipeline):
    # 10 validation images (5 a class): 3 processes do not divide them. A shard padded with repeats would count
    # some images twice, and its top-1 and loss would depend on the number of processes.
    data = make_imagefolder(tmp_path / "data", classes=("a", "b"), per_class=4, val_per_class=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROADMAP_CACHE": str(tmp_path / "cache")}
    seen = {}
    for world in (1, 2, 3):
        ranks = [subprocess.Popen([sys.executable, "-c", _EVALUATE, str(rank), str(world),
                                   f"file://{tmp_path / f'pg-{world}'}", str(data), pipeline],
                                  stdout=subprocess.PIPE, text=True, env=env) for rank in range(world)]
        try:
            outs = [json.loads(r.communicate(timeout=240)[0].strip().splitlines()[-1]) for r in ranks]
        finally:
            for r in ranks:
                r.kill()
        assert all(out == outs[0] for out in outs)  # the ranks agree
        seen[world] = outs[0]
    assert 0 < seen[1]["top1"] < 100  # the network gets some right and some wrong: a repeat would show
    for world in (2, 3):
        assert seen[world]["top1"] == pytest.approx(seen[1]["top1"], abs=1e-4)  # one image is 10 points
        assert seen[world]["val_loss"] == pytest.approx(seen[1]["val_loss"], rel=1e-6)


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
