import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give a freshly built model weights and norm statistics far from their init (gamma=1e-6 would make
    every ConvNeXt block an identity and hide a wrong block)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("gamma") or (name.endswith("weight") and t.ndim == 1):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                fan_in = t[0].numel() if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
    return model


def make_imagefolder(root, classes=("cat", "dog", "owl"), per_class=10, val_per_class=4, size=24):
    """A tiny ImageFolder tree: each class a colour, with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3)) + 60 * k
                img = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype("uint8")
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


# one seed, in this process: quick; the tests of seeds and executors say so themselves
SMOKE = ["--recipe", "smoke", "--set", "train.batch_size=8", "--set", "train.epochs=2", "--seeds", "1",
         "--executor", "inprocess"]


def make_csv_dataset(root, classes=("cat", "dog", "owl"), per_class=10, tests=6, size=24):
    """A tiny Kaggle-style set: train/<id>.png with train.csv (id,label), test/<id>.png with test.csv (id)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = ["id,label"]
    for k, name in enumerate(classes):
        for i in range(per_class):
            image_id = f"img{k}{i:03d}"
            img = np.clip(60 * k + rng.normal(0, 20, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(img).save(root / "train" / f"{image_id}.png")
            rows.append(f"{image_id},{name}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    ids = [f"t{n:02d}" for n in range(tests)][::-1]  # not in sorted order: the CSV's order must be kept
    for n, image_id in enumerate(ids):
        img = np.clip(60 * (n % len(classes)) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype("uint8")
        Image.fromarray(img).save(root / "test" / f"{image_id}.png")
    (root / "test.csv").write_text("id\n" + "\n".join(ids) + "\n")
    return root


def make_photos(root, classes=("disc", "ring", "cross"), per_class=12, val_per_class=4, size=(56, 44)):
    """A small real-looking ImageFolder set: textured shapes on noisy textured backgrounds (the synthetic set's
    drawing), not square, in train/ and val/."""
    import random

    from convnext_roadmap.data.synthetic import TEXTURES, draw as _draw

    rng = random.Random(7)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k, shape in enumerate(classes):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = _draw(shape, TEXTURES[i % 2], rng, max(size))
                img.crop((0, 0, *size)).save(folder / f"{i:03d}.jpg", quality=90)
    return root


# three networks × three seeds of top-1, worked by hand in test_report and test_seeds
TOP1 = {"resnet50": [70.0, 71.0, 72.5], "stage_ratio": [71.0, 71.5, 74.5], "patchify_stem": [68.0, 68.0, 72.0]}


def three_by_three(folder):
    """A constructed experiment of three networks × three seeds (TOP1), each run 0.5 CPU-hours."""
    import json

    from convnext_roadmap import results
    from convnext_roadmap.plan import save

    save(folder, "resnet50", "cpu_proxy", [0, 1, 2],
         [{"name": n, "label": n, "baseline": b, "group": "path", "gflops": 4.0, "params": 25e6}
          for n, b in (("resnet50", None), ("stage_ratio", "resnet50"), ("patchify_stem", "stage_ratio"))])
    for name, values in TOP1.items():
        for seed, v in enumerate(values):
            run = results.run_dir(folder, name, seed)
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "top1": v, "train_loss": 1.0}) + "\n")
            climbing = (name, seed) == ("stage_ratio", 2)
            results.write_json(run / "summary.json", {"status": "completed", "name": name, "seed": seed,
                                                      "final_top1": v, "train_img_s": 100.0,
                                                      "levelled_off": not climbing,
                                                      "last_epochs_below_best": 2.3 if climbing else 0.5,
                                                      "wall_s": 900.0, "processes": 1,
                                                      "hardware": {"device": "cpu", "torch_threads": 2}})
    return TOP1


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small copy of the embedded synthetic set (48², 6 + 3 images a class)."""
    from convnext_roadmap.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn") / "set", train_per_class=6, val_per_class=3, size=48)


def proxy_data(root, *overrides):
    """The cpu_proxy recipe's data section on an ImageFolder at `root`."""
    from convnext_roadmap import resolve_config

    return resolve_config(recipe="cpu_proxy", data=f"imagefolder:{root}", overrides=list(overrides)).data


def epoch_batches(cfg, epoch=1, seed=3):
    """The training images of one epoch of `cfg`'s data (batches of 4), as the loader gives them."""
    from convnext_roadmap.data import make_loaders

    train, _, _ = make_loaders(cfg.data, 4, 8, seed=seed)
    train.set_epoch(epoch)
    return [x for x, _ in train]
