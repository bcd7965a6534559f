"""Using a finished run: evaluate its best weights on a data set, or write Kaggle-style predictions."""

from __future__ import annotations

import csv
import io
from contextlib import nullcontext
from pathlib import Path

import torch

from . import results
from .config import Config
from .data import (IMAGE_EXTENSIONS, ImageDataset, Split, eval_transform, find_image, load_splits,
                   training_classes)
from .device import loader_workers
from .errors import RoadmapError
from .loading import read_config


def find_run(results_root: Path, run: str) -> Path:
    """A run folder: a path, or EXPERIMENT/RUN[/seedK] under the results folder (seed0 when not given)."""
    for candidate in (Path(run), Path(results_root) / run):
        for path in (candidate, candidate / "seed0"):
            if (path / "config.yaml").exists():
                if not (path / "best.pt").exists():
                    raise RoadmapError(f"{path}: the run has no best.pt yet (has it finished an epoch?)")
                return path
    raise RoadmapError(f"{run}: no such run (give a run folder, or EXPERIMENT/RUN under {results_root})")


def load_run(path: Path, device: torch.device):
    """(config, best weights as a model on `device` in the run's memory format, classes)."""
    from .model import build_model

    cfg = read_config(path / "config.yaml")
    best = results.load_checkpoint(path / "best.pt")
    model = build_model(cfg, len(best["classes"]))
    model.load_state_dict(best["model"])
    model = model.to(device).eval()
    return cfg, model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model, best["classes"]


def _loader(cfg: Config, split: Split, batch_size: int):
    return torch.utils.data.DataLoader(ImageDataset(split, eval_transform(cfg.data), skip=False), batch_size,
                                       shuffle=False, num_workers=loader_workers(cfg.data.workers))


@torch.no_grad()
def _probabilities(model, loader, device, flip: bool, cfg: Config | None = None):
    """Softmax of every image, evaluated as the run trained (`cfg.train`): its autocast precision on this device
    and its memory format."""
    from .device import autocast_dtype

    amp = autocast_dtype(cfg.train.amp, device)[0] if cfg is not None else None
    channels_last = cfg is not None and cfg.train.channels_last
    out = []
    for x, _ in loader:
        x = x.to(device)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            p = model(x).float().softmax(-1)
            if flip:
                p = (p + model(torch.flip(x, dims=[3])).float().softmax(-1)) / 2
        out.append(p.cpu())
    return torch.cat(out)


def evaluate_run(path: Path, spec: str | None, device: torch.device, flip: bool = False) -> dict:
    """Top-1, top-5 and loss of a run's best weights on the validation split of `spec` (default: its own data)."""
    cfg, model, classes = load_run(path, device)
    _, val = load_splits(spec or cfg.data.source)
    if val.classes != classes:
        raise RoadmapError(f"--data {spec}: its classes differ from the run's ({len(val.classes)} vs {len(classes)})")
    probs = _probabilities(model, _loader(cfg, val, cfg.train.batch_size * 2), device, flip, cfg)
    target = torch.tensor([t for _, t in val.samples])
    top5 = probs.topk(min(5, len(classes)), dim=-1).indices
    return {"run": str(path), "images": len(target), "top1": 100 * (top5[:, 0] == target).float().mean().item(),
            "top5": 100 * (top5 == target[:, None]).any(-1).float().mean().item(),
            "loss": torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), target).item()}


def test_images(spec: str) -> list[tuple[str, Path]]:
    """(id, image) of a test set, in a fixed order: the ids of PATH/test.csv (first column) with images in
    PATH/test/, or every image of PATH/test/ (or of PATH itself) sorted by name, its id the file name's stem."""
    kind, _, arg = spec.partition(":")
    if kind not in ("csv", "imagefolder") or not arg:
        raise RoadmapError(f"--data {spec}: expected csv:PATH (PATH/test/ and optionally PATH/test.csv)")
    root = Path(arg).expanduser()
    folder = root / "test" if (root / "test").is_dir() else root
    if not folder.is_dir():
        raise RoadmapError(f"--data {spec}: no such folder")
    if (root / "test.csv").is_file():
        with open(root / "test.csv", newline="") as f:
            rows = [r for r in csv.reader(f) if r][1:]
        return [(r[0], find_image(folder, r[0])) for r in rows]
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise RoadmapError(f"{folder}: no images to predict")
    return [(p.stem, p) for p in images]


def predict(path: Path, spec: str, out: Path, device: torch.device, flip: bool = False) -> int:
    """Write `id,label` for every test image, labels named as in the training data; returns the row count. Where
    `spec` has a training split, its classes must be the run's: a run trained on other data would write a file of
    its own class names that looks like a submission."""
    cfg, model, classes = load_run(path, device)
    named = training_classes(spec)
    if named is not None and named[1] != classes:
        raise RoadmapError(f"--data {spec}: {named[0]} names the classes {_few(named[1])}, but {path} was trained "
                           f"on {_few(classes)}: predict with a run trained on this data")
    items = test_images(spec)
    split = Split([(p, 0) for _, p in items], classes)
    probs = _probabilities(model, _loader(cfg, split, cfg.train.batch_size * 2), device, flip, cfg)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "label"])
    for (image_id, _), k in zip(items, probs.argmax(-1).tolist()):
        writer.writerow([image_id, classes[k]])
    results.write_text(out, buffer.getvalue())
    return len(items)


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" … ({len(names)})" if len(names) > 5 else "")
