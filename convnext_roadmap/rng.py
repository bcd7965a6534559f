"""The global random streams (Python's, numpy's, torch's, and CUDA's where there is one): seed, save, restore."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_state(cuda: bool = True) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Streams:
    """Streams of their own, seeded once, swapped in for the length of each `with` block and kept between blocks,
    so that what draws inside the blocks and what draws outside them do not shift each other."""

    def __init__(self, seed: int):
        outside = get_state(cuda=False)
        seed_all(seed)
        self.mine = get_state(cuda=False)
        set_state(outside)

    def __enter__(self):
        self.outside = get_state(cuda=False)
        set_state(self.mine)

    def __exit__(self, *exc):
        self.mine = get_state(cuda=False)
        set_state(self.outside)
        return False
