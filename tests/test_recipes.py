"""The paper's recipes on real-looking images: augmentations that never end a run, the paper_in1k recipe itself
scaled down only by --set, gradient accumulation, bf16 autocast and channels_last on the CPU."""

import json
import logging
import random

import pandas as pd
import pytest
import torch
from timm.data import create_transform

from convnext_roadmap import resolve_config
from convnext_roadmap.cli import main
from convnext_roadmap.data import ImageDataset, Split, load_splits
from convnext_roadmap.data.augment import BatchAugment
from convnext_roadmap.data.pil import transforms
from convnext_roadmap.data.synthetic import SHAPES, TEXTURES, draw as _draw
from convnext_roadmap.resources import ABLATIONS
from convnext_roadmap.results import read_metrics

from conftest import make_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos") / "set", per_class=22)


def _images(n, size=64):
    rng = random.Random(0)
    return [_draw(SHAPES[i % 5], TEXTURES[i % 2], rng, size) for i in range(n)]


def test_rand_m9_on_thousands_of_images_never_fails():
    data = resolve_config(recipe="paper_in1k", data="synthetic", overrides=["data.img_size=32"]).data
    ours, _ = transforms(data)
    images = _images(40)
    random.seed(0)
    torch.manual_seed(0)
    for i in range(3000):
        out = ours(images[i % len(images)])
        assert out.shape == (3, 32, 32)


def test_timm_alone_is_what_failed():
    # the root cause, kept visible: timm's op asks Pillow ≥ 13 for 0 bits, which it refuses
    import PIL

    if tuple(int(v) for v in PIL.__version__.split(".")[:1]) < (13,):
        pytest.skip("Pillow before 13 still keeps 0 bits")
    from timm.data.auto_augment import AugmentOp

    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    with pytest.raises(ValueError, match="bits must be"):
        op(_images(1)[0])
    plain = create_transform(32, is_training=True, auto_augment="rand-m10-inc1-p1.0")
    failures = 0
    for _ in range(200):
        try:
            plain(_images(1)[0])
        except ValueError:
            failures += 1
    assert failures > 0


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (ABLATIONS / "recipes").glob("*.yaml")))
def test_every_recipes_augmentations_run(recipe):
    data = resolve_config(recipe=recipe, data="synthetic", overrides=["data.img_size=32"]).data
    images = _images(10)
    if data.pipeline == "tensor":
        batch = torch.stack([torch.from_numpy(__import__("numpy").array(i)).permute(2, 0, 1) for i in images])
        aug, g = BatchAugment(data), torch.Generator().manual_seed(0)
        for _ in range(50):
            assert aug(batch, g).shape == (10, 3, 32, 32)
    else:
        train, _ = transforms(data)
        for i in range(500):
            assert train(images[i % 10]).shape == (3, 32, 32)


def test_an_image_that_cannot_be_augmented_is_skipped_and_counted(photos, tmp_path, caplog):
    train, _ = load_splits(f"imagefolder:{photos}")
    bad = tmp_path / "odd.png"
    _images(1)[0].resize((13, 13)).save(bad)  # the one image our transform below cannot handle

    def transform(img):
        if img.size == (13, 13):
            raise ValueError("bits must be between or equal to 1 and 8")
        return img.size

    samples = train.samples[:3] + [(bad, 0)] + train.samples[3:6]
    ds = ImageDataset(Split(samples, train.classes), transform)
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 7 and (13, 13) not in [size for size, _ in items] and ds.skipped == {bad}
    assert "could not augment" in caplog.text and "bits must be" in caplog.text and "1 skipped" in caplog.text


@pytest.mark.slow
def test_the_paper_recipe_itself_runs_to_the_end(tmp_path, photos, capsys):
    scaled = ["--set", "data.img_size=32", "--set", "stages.width_mult=0.125", "--set", "stages.depth_mult=0.34",
              "--set", "train.epochs=2", "--set", "train.warmup_epochs=1", "--set", "train.batch_size=8",
              "--set", "train.target_batch=16", "--set", "data.workers=1"]
    assert main(["run", "--steps", "resnet50", "--recipe", "paper_in1k", "--data", f"imagefolder:{photos}",
                 *scaled, "--seeds", "1", "--executor", "inprocess", "--device", "cpu", "--results", str(tmp_path),
                 "--experiment", "paper"]) == 0
    summary = json.loads((tmp_path / "paper" / "resnet50" / "seed0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["accum_steps"] == 2 and summary["effective_batch"] == 16
    assert pd.read_csv(tmp_path / "paper" / "table.csv").status.tolist() == ["completed"]
    cfg = resolve_config(recipe="paper_in1k", data="synthetic")
    assert cfg.data.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.train.mixup == 0.8 and cfg.train.cutmix == 1.0
    assert cfg.train.target_batch == 4096


def test_accumulation_gives_the_losses_of_the_larger_batch(tmp_path, photos):
    # a LayerNorm network (no batch statistics), no mixup, the per-image path in this process: the same images
    # in the same order with the same augmentations either way (each image's draws are its own; the erasing's
    # noise, drawn a batch at a time on the device, is left out)
    common = ["run", "--steps", "layernorm", "--recipe", "smoke", "--data", f"imagefolder:{photos}",
              "--set", "data.pipeline=pil", "--set", "data.workers=0", "--set", "train.mixup=0",
              "--set", "data.random_erasing=0",
              "--set", "train.epochs=2", "--seeds", "1", "--executor", "inprocess", "--results", str(tmp_path)]
    assert main([*common, "--experiment", "big", "--set", "train.batch_size=32"]) == 0
    assert main([*common, "--experiment", "accum", "--set", "train.batch_size=8",
                 "--set", "train.accum_steps=4"]) == 0
    big = read_metrics(tmp_path / "big" / "layernorm" / "seed0")
    accum = read_metrics(tmp_path / "accum" / "layernorm" / "seed0")
    for a, b in zip(big, accum):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    summary = json.loads((tmp_path / "accum" / "layernorm" / "seed0" / "summary.json").read_text())
    assert summary["effective_batch"] == 32 and summary["lr_rule"].startswith("0.003 × 32 / 64")


def test_target_batch_that_does_not_divide_is_one_line(tmp_path, photos, capsys):
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--data", f"imagefolder:{photos}",
                 "--set", "train.batch_size=8", "--set", "train.target_batch=20", "--seeds", "1",
                 "--executor", "inprocess", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.target_batch: got 20, expected a multiple of batch_size × processes = 8 × 1 = 8" in err
    assert not (tmp_path / "resnet50-smoke").exists()


def test_bf16_autocast_and_channels_last_run_on_the_cpu(tmp_path, photos):
    common = ["run", "--steps", "fewer_norms", "--recipe", "smoke", "--data", f"imagefolder:{photos}",
              "--seeds", "1", "--executor", "inprocess", "--results", str(tmp_path)]
    assert main([*common, "--experiment", "on", "--set", "train.amp=true", "--set", "train.channels_last=true"]) == 0
    assert main([*common, "--experiment", "off", "--set", "train.amp=false",
                 "--set", "train.channels_last=false"]) == 0
    on = json.loads((tmp_path / "on" / "fewer_norms" / "seed0" / "summary.json").read_text())
    off = json.loads((tmp_path / "off" / "fewer_norms" / "seed0" / "summary.json").read_text())
    assert (on["autocast"], on["channels_last"]) == ("bfloat16", True)
    assert (off["autocast"], off["channels_last"]) == (None, False)
    assert on["epochs"] == off["epochs"] == 2
    # auto: bf16 only where the device computes it natively (what torch's oneDNN says of this CPU)
    assert main([*common, "--experiment", "auto", "--set", "train.amp=auto"]) == 0
    auto = json.loads((tmp_path / "auto" / "fewer_norms" / "seed0" / "summary.json").read_text())
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert auto["autocast"] == ("bfloat16" if native else None)
    assert native or any("no native bf16, so it trained in fp32" in n for n in auto["notes"])


def test_imagenet_proxy_runs_on_a_subset_built_by_roadmap_subset(tmp_path, capsys):
    imagenet = make_photos(tmp_path / "imagenet", classes=tuple(f"n{k:08d}" for k in range(12)), per_class=4,
                           val_per_class=2)
    assert main(["subset", str(imagenet), str(tmp_path / "in4"), "--classes", "4"]) == 0
    assert "linked 4 classes (n00000000 … n00000009)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "in4" / "train").iterdir()) == \
        ["n00000000", "n00000003", "n00000006", "n00000009"]
    assert main(["subset", str(imagenet), str(tmp_path / "in4"), "--classes", "4"]) == 2  # not over a subset
    assert main(["run", "--steps", "resnet50", "--recipe", "imagenet_proxy", "--data", f"imagefolder:{tmp_path / 'in4'}",
                 "--set", "data.img_size=32", "--set", "stages.width_mult=0.125", "--set", "train.epochs=1",
                 "--set", "train.warmup_epochs=0", "--set", "train.batch_size=8", "--set", "data.workers=1",
                 "--seeds", "1", "--executor", "inprocess", "--device", "cpu", "--results", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "resnet50-imagenet_proxy" / "resnet50" / "seed0" / "summary.json")
                         .read_text())
    assert summary["status"] == "completed" and len(summary["classes"]) == 4


def test_the_torchvision_recipe_is_the_first_bar(tmp_path, photos):
    cfg = resolve_config(recipe="torchvision_r50", data="synthetic")
    t = cfg.train
    assert (t.opt, t.momentum, t.lr, t.base_batch_size, t.weight_decay, t.epochs) == ("momentum", 0.9, 0.1, 256, 1e-4, 90)
    assert (t.sched, t.decay_epochs, t.decay_rate, t.filter_bias_and_bn) == ("step", 30, 0.1, False)
    assert cfg.data.auto_augment is None and cfg.data.random_erasing == 0 and t.mixup == t.cutmix == 0
    steps = [type(s).__name__ for s in transforms(cfg.data)[0].transforms]  # crop and flip only: no color jitter
    assert steps == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
    assert main(["run", "--upto", "resnet50", "--recipe", "torchvision_r50", "--data", f"imagefolder:{photos}",
                 "--set", "data.img_size=32", "--set", "stages.width_mult=0.125", "--set", "train.epochs=2",
                 "--set", "train.batch_size=8", "--set", "train.decay_epochs=1", "--set", "data.workers=0",
                 "--seeds", "1", "--executor", "inprocess", "--device", "cpu", "--results", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "resnet50-torchvision_r50" / "table.csv")
    assert table.step.tolist() == ["resnet50"] and table.paper_top1.tolist() == [76.13]
    lrs = [m["lr"] for m in read_metrics(tmp_path / "resnet50-torchvision_r50" / "resnet50" / "seed0")]
    assert lrs[1] == pytest.approx(lrs[0] * 0.1)  # a step decay, ×0.1 after decay_epochs


def test_tensorboard_scalars_land_in_each_runs_folder(tmp_path, photos):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", "--steps", "resnet50,patchify_stem", "--recipe", "smoke", "--data", f"imagefolder:{photos}",
                 "--seeds", "1", "--executor", "inprocess", "--results", str(tmp_path), "--log", "tensorboard",
                 "--log-every-steps", "2"]) == 0
    for step in ("resnet50", "patchify_stem"):
        events = EventAccumulator(str(tmp_path / "resnet50-smoke" / step / "seed0")).Reload()
        tags = events.Tags()["scalars"]
        assert {"epoch/top1", "epoch/train_loss", "epoch/val_loss", "step/train_loss", "step/lr"} <= set(tags)
        assert [e.step for e in events.Scalars("epoch/top1")] == [1, 2]


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise ValueError("bits must be between or equal to 1 and 8")


def test_the_root_cause_of_a_worker_failure_is_the_original_error():
    from convnext_roadmap.train.runner import root_cause

    with pytest.raises(Exception) as caught:
        next(iter(torch.utils.data.DataLoader(_Broken(), batch_size=2, num_workers=1)))
    assert str(caught.value).splitlines()[0].startswith("Caught ValueError in DataLoader worker process 0")
    assert root_cause(caught.value) == "ValueError: bits must be between or equal to 1 and 8"
    try:
        raise RuntimeError("outer") from KeyError("the real one")
    except RuntimeError as e:
        assert root_cause(e) == "KeyError: 'the real one'"


def test_a_recipe_file_needs_no_yaml_suffix(tmp_path, capsys):
    recipe = tmp_path / "mine"  # a name is one of ablations/recipes/, else a file
    recipe.write_text("inherit: smoke\ntrain:\n  epochs: 3\n")
    assert main(["run", "--steps", "resnet50", "--recipe", str(recipe), "--dry-run"]) == 0
    assert "recipe: 3 epochs" in capsys.readouterr().out


def test_stochastic_depth_is_the_bases_and_the_cpu_proxy_sets_its_own():
    # Table 5: ConvNeXt-T trains with stochastic depth 0.1, ConvNeXt-B with 0.5; the paper's recipe takes each
    # path's from its base, on every step of it, and so does imagenet_proxy, which inherits it; cpu_proxy sets 0
    for base, rate in [("resnet50", 0.1), ("resnet200", 0.5)]:
        for step in [base, "large_kernel", "layer_scale"]:
            assert resolve_config(step, base=base, recipe="paper_in1k", data="synthetic").block.drop_path == rate
    assert resolve_config("layer_scale", recipe="imagenet_proxy", data="synthetic").block.drop_path == 0.1
    assert resolve_config("layer_scale", recipe="cpu_proxy", data="synthetic").block.drop_path == 0.0


def test_layer_scale_on_every_step_is_one_override():
    # the reading the paper leaves open: layer scale only on the last step (as here), or from the start
    from convnext_roadmap import build_model
    from convnext_roadmap.roadmap import steps

    for step in ["resnet50", *(s.name for s in steps("resnet50"))]:
        everywhere = build_model(resolve_config(step, overrides=["block.layer_scale=1e-6", "stages.width_mult=0.25"]))
        gammas = [b.gamma for stage in everywhere.stages for b in stage.blocks]
        assert all(g is not None and torch.all(g == 1e-6) for g in gammas)
        last_only = build_model(resolve_config(step, overrides=["stages.width_mult=0.25"]))
        assert all((b.gamma is not None) == (step == "layer_scale") for s in last_only.stages for b in s.blocks)
