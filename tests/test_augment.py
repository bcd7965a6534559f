"""data/augment.py: every RandAugment op on tensors computes what timm's PIL op computes; a training batch is
cropped, flipped and augmented as timm's transforms would (as uint8 for a GPU run), normalized and erased."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp

from convnext_roadmap import resolve_config
from convnext_roadmap.data import load_splits
from convnext_roadmap.data.augment import GEOMETRIC, RAND_OPS, BatchAugment
from convnext_roadmap.data.synthetic import draw as _draw
from convnext_roadmap.data.tensor import decode, stored_size

from conftest import epoch_batches, proxy_data


@pytest.mark.parametrize("name", RAND_OPS)
@pytest.mark.parametrize("increasing", [1, 0])
def test_each_rand_augment_op_matches_timms(name, increasing):
    data = resolve_config(recipe="cpu_proxy", overrides=["data.auto_augment=rand-m9-inc1",
                                                         "data.interpolation=bicubic"]).data
    aug = BatchAugment(data)
    aug.rand["inc"] = increasing
    img = _draw("ring", "dots", random.Random(4), 64)  # a textured shape on a noisy textured background
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float()
    timm_name = name + ("Increasing" if increasing and name in ("Posterize", "Solarize", "Color", "Contrast",
                                                               "Brightness", "Sharpness") else "")
    for magnitude, seed in ((3.0, 1), (9.0, 2)):
        op = AugmentOp(timm_name, prob=1.0, magnitude=magnitude,
                       hparams={"img_mean": (124, 116, 104), "interpolation": Image.BICUBIC})
        random.seed(seed)
        sign = -1.0 if random.random() > 0.5 else 1.0  # timm negates a level when random() > 0.5
        random.seed(seed)
        expected = torch.from_numpy(np.array(op(img))).permute(2, 0, 1)[None].float()
        m, s = torch.tensor([magnitude / 10]), torch.tensor([sign])
        if name in GEOMETRIC:  # interpolation differs (PIL's bicubic against grid_sample's) at the edges
            ours = aug._affine(x.clone(), GEOMETRIC[name](m, s)).clamp(0, 255)
            assert (ours - expected).abs().mean() < 2.5
        else:  # PIL rounds to integers after each op
            ours = getattr(aug, f"_{name.lower()}")(x.clone(), m, s).clamp(0, 255)
            assert (ours - expected).abs().mean() < 0.6 and (ours - expected).abs().max() < 1.5


def test_a_training_batch_is_augmented_and_erased(synthetic):
    data = proxy_data(synthetic, "data.random_erasing=1.0")
    train, _ = load_splits(data.source)
    images, targets, _ = decode(train, stored_size(data))
    x = BatchAugment(data, uint8=True)(images[:16], torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.uint8  # a GPU run's: a quarter of float32's bytes to copy
    erased = epoch_batches(resolve_config(recipe="cpu_proxy", data=data.source, overrides=["data.random_erasing=1.0"]))
    plain = epoch_batches(resolve_config(recipe="cpu_proxy", data=data.source, overrides=["data.random_erasing=0.0"]))
    assert all(b.dtype == torch.float32 for b in erased)
    changed = torch.cat([(a != b).any((1, 2, 3)) for a, b in zip(erased, plain)])
    assert changed.sum() >= 0.75 * len(changed)  # erasing on (nearly) every image: a box of noise


def test_a_crop_of_the_whole_image_is_the_image_or_its_mirror(synthetic):
    # scale [1, 1] and a square image: timm's RandomResizedCrop can only take the whole image (ratio 1 is the
    # only one that fits), so every output is the stored image, flipped or not, resampled at the same size
    data = proxy_data(synthetic, "data.crop_scale=[1.0, 1.0]", "data.auto_augment=null", "data.random_erasing=0.0")
    train, _ = load_splits(data.source)
    images, _, _ = decode(train, stored_size(data))
    x = BatchAugment(data, uint8=True)(images[:32], torch.Generator().manual_seed(3))
    x, plain = x.float(), images[:32].float()
    same = (x - plain).abs().amax((1, 2, 3)) < 1  # resampled at the same size, rounded to integers
    mirrored = (x - plain.flip(3)).abs().amax((1, 2, 3)) < 1
    assert (same | mirrored).all() and 4 < mirrored.sum() < 28  # about half of them flipped
