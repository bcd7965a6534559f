"""A run's checkpoint: what a Trainer's state is (model, optimizer, schedule, EMA, the random streams), saved and
restored."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import rng


def snapshot(trainer, epoch: int, history: list[dict], best: float) -> dict:
    """Everything a resumed run needs to go on as if it had never stopped, after `epoch` (0-based)."""
    return {"epoch": epoch, "history": history, "best_top1": best, "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "ema": trainer.ema.state_dict() if trainer.ema is not None else None, "rng": rng.get_state()}


def load(path: Path, device: torch.device) -> dict:
    return torch.load(path, map_location=device, weights_only=False)


def restore(trainer, state: dict) -> None:
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.ema is not None and state.get("ema") is not None:
        trainer.ema.load_state_dict(state["ema"])
    rng.set_state(state["rng"])
