"""What a finished run says of itself in summary.json: its numbers, and where, on what and with which versions it
trained."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch
import torch.nn as nn

from .. import results
from ..config import Config
from ..job import Job


def summary(job: Job, cfg: Config, trainer, history: list[dict], best: float, wall: float, world: int,
            skipped: int, resumes: list[dict] = ()) -> dict:
    """The run's summary.json. `resumes`: each time it went on from a checkpoint (the epoch and batch it went on
    from, of how many, and the seconds of training done after that checkpoint and lost)."""
    last = history[-1]
    later = history[1:] or history  # the first epoch warms up
    speeds = sorted(m["train_img_s"] for m in later)
    # how much longer an epoch takes than its training steps alone: the data path's cost (1.0: none)
    over = sorted(m["train_s"] / max(m["train_s"] - m["data_s"], 1e-9) for m in later if "data_s" in m)
    notes = [*trainer.notes, *([f"{skipped} image(s) left out: unreadable or could not be augmented (skipped.txt)"]
                               if skipped else [])]
    below = results.below_best([m["top1"] for m in history])
    return {
        "status": "completed", "name": job.name, "seed": job.seed, **job.meta, **job.measures,
        "final_top1": last["top1"], "final_top5": last["top5"], "best_top1": best,
        "final_ema_top1": last.get("ema_top1"), "epochs": len(history),
        "last_epochs_below_best": below, "levelled_off": None if below is None else below <= results.LEVEL_MARGIN,
        "train_img_s": speeds[len(speeds) // 2], "epoch_over_step": over[len(over) // 2] if over else None,
        "img_size": cfg.data.img_size,
        "effective_batch": trainer.effective_batch, "accum_steps": trainer.accum, "lr": trainer.lr,
        "lr_rule": f"{cfg.train.lr:g} × {trainer.effective_batch} / {cfg.train.base_batch_size} (linear)",
        "autocast": str(trainer.autocast_dtype).removeprefix("torch.") if trainer.autocast_dtype else None,
        "channels_last": is_channels_last(trainer.model),
        "fused_optimizer": bool(trainer.optimizer.defaults.get("fused")),
        "processes": world, "hosts": hosts(world), "pretrained": cfg.train.pretrained, "notes": notes,
        "skipped_images": skipped, "resumes": list(resumes),
        "wall_s": wall,
        "hardware": hardware(trainer.device), "git_commit": git_commit(), "versions": versions(),
        "classes": trainer.classes,
    }


def hosts(world: int) -> list[str]:
    """The hosts the job's processes ran on, in rank order (every rank takes part)."""
    if world == 1:
        return [platform.node()]
    names = [None] * world
    torch.distributed.all_gather_object(names, platform.node())
    return names


def is_channels_last(model: nn.Module) -> bool:
    """Whether the network's first 4-d weight is laid out NHWC (what `train.channels_last` asks)."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return bool(weight is not None and weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous())


def hardware(device: torch.device) -> dict:
    from ..device import cpu_name

    hw = {"device": str(device), "cpu": cpu_name(), "cpus": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "host": platform.node()}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
        hw["visible_gpus"] = os.environ.get("CUDA_VISIBLE_DEVICES")  # what this process was given, as given
    return hw


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import timm

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "convnext_roadmap": v("convnext-roadmap"), "fvcore": v("fvcore")}
