"""A run's checkpoint: what a Trainer's state is (model, optimizer, schedule, EMA, fp16 loss scale, every rank's
random streams, and in the middle of an epoch every rank's place in it), saved and restored. Read on the CPU,
whatever the run trains on: what belongs on the device, the model and the optimizer put there themselves, and the
random streams must stay CPU tensors."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import results, rng
from .schedule import WarmupCosine


def streams(trainer) -> list[dict]:
    """Every rank's random streams, in rank order (each rank calls this; rank 0 keeps the list)."""
    return gather(trainer, rng.get_state(trainer.device))


def gather(trainer, mine):
    """Every rank's `mine`, in rank order (each rank calls this; rank 0 keeps the list)."""
    if trainer.world == 1:
        return [mine]
    every: list = [None] * trainer.world
    torch.distributed.all_gather_object(every, mine)
    return every


def snapshot(trainer, epoch: int, history: list[dict], best: float, every_rng: list[dict],
             places: list[dict] | None = None, resumes: list[dict] = ()) -> dict:
    """Everything a resumed run needs to go on as if it had never stopped: after epoch `epoch` (0-based, -1 for
    none), or with `places` (every rank's `Trainer.train_epoch` place) in the middle of epoch `epoch + 1`; and the
    run's resumes so far, for its summary."""
    return {"epoch": epoch, "history": history, "best_top1": best, "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "ema": trainer.ema.state_dict() if trainer.ema is not None else None, "rng": every_rng,
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
            "places": places, "resumes": list(resumes), "saved_at": time.time()}


def place(trainer, saved: dict) -> tuple[dict | None, str | None]:
    """This rank's place in the saved epoch (None at an epoch's end), and a line to say when the run cannot go on
    from it (another number of processes, another kind of device: the epoch begins again, from the saved
    weights)."""
    places = saved.get("places")
    if not places:
        return None, None
    said = f"the checkpoint was saved in the middle of epoch {saved['epoch'] + 2}"
    again = ("the epoch begins again from its first batch, with the weights it had reached (not the run the "
             "checkpoint's would have been)")
    if len(places) != trainer.world:
        return None, f"{said} by {len(places)} process(es), this run has {trainer.world}: {again}"
    if places[0].get("device", trainer.device.type) != trainer.device.type:  # its loaders' streams are another's
        return None, f"{said} on {places[0].get('device')}, this run trains on {trainer.device.type}: {again}"
    return places[trainer.rank], None


def resume(trainer, path: Path) -> tuple[dict, str | None]:
    """Restore the trainer from its checkpoint; return the checkpoint, and a line to say where the run cannot go on
    exactly as the saved one would (another number of processes, a checkpoint of an earlier version)."""
    saved = results.load_checkpoint(path)
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    if trainer.ema is not None and saved.get("ema") is not None:
        trainer.ema.load_state_dict(saved["ema"])
    if trainer.scaler is not None and saved.get("scaler") is not None:
        trainer.scaler.load_state_dict(saved["scaler"])
    if isinstance(trainer.scheduler, WarmupCosine) and saved["scheduler"]:  # timm's CosineLRScheduler's state
        note = ("the checkpoint was written under timm's cosine schedule; the run goes on under the official one "
                "(docs/gpu.md), so its epochs before and after the resume follow two schedules")
        return saved, _restore_streams(trainer, saved["rng"]) or note
    return saved, _restore_streams(trainer, saved["rng"])


def _restore_streams(trainer, saved_rng) -> str | None:
    """This rank's streams from the checkpoint; a line to say when it cannot be the saved run's own."""
    if isinstance(saved_rng, dict):  # an earlier version kept rank 0's alone
        rng.set_state(saved_rng, trainer.device)
        return None if trainer.world == 1 else ("the checkpoint kept only rank 0's random streams: every rank goes "
                                                "on with them")
    every = saved_rng
    if trainer.rank < len(every):
        rng.set_state(every[trainer.rank], trainer.device)
    if len(every) == trainer.world:
        return None
    said = f"the checkpoint was saved by {len(every)} process(es), this run has {trainer.world}"
    if len(every) < trainer.world:
        return f"{said}: {_ranks(len(every), trainer.world)} go on with fresh random streams (seed + rank)"
    return f"{said}: the random streams of {_ranks(trainer.world, len(every))} are left"


def _ranks(first: int, end: int) -> str:
    return f"rank {first}" if end - first == 1 else f"ranks {first}-{end - 1}"
