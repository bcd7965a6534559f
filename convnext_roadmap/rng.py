"""The global random streams (Python's, numpy's, torch's, and CUDA's where there is one): seed, save, restore."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_cpu(seed: int) -> None:
    """Python's, numpy's and torch's CPU generator, not CUDA's (which `torch.manual_seed` would reseed too)."""
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])  # every bit: numpy's seed alone takes 32
    torch.random.default_generator.manual_seed(seed)


@contextlib.contextmanager
def restored():
    """The CPU streams as they were before the block, whatever it drew."""
    outside = get_state()
    try:
        yield
    finally:
        set_state(outside)


def get_state(device: torch.device | None = None) -> dict:
    """The streams of this process; with a CUDA device, also that device's (the one this process trains on, not
    every visible GPU: a run may resume with another number of them)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_state(state: dict, device: torch.device | None = None) -> None:
    """Restore `get_state`'s streams; their tensors are read on the CPU, wherever the run trains."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # an earlier version kept every visible GPU's
            cuda = cuda[device.index or 0] if (device.index or 0) < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda.cpu(), device)
