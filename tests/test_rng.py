"""rng.py: the global random streams seeded, saved and restored, and put back around a block."""

import random

import numpy as np
import torch

from convnext_roadmap import rng


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(2).tolist()


def test_a_saved_state_gives_the_same_draws_again():
    rng.seed_all(5)
    state = rng.get_state()
    first = _draws()
    _draws()
    rng.set_state(state)
    assert _draws() == first


def test_seed_cpu_takes_every_bit_of_a_64_bit_seed():
    # numpy's legacy seed takes 32 bits: seeds that differ only above bit 32 must still give other streams
    rng.seed_cpu(7)
    low = _draws()
    rng.seed_cpu(7 + 2**40)
    assert _draws()[1] != low[1]
    rng.seed_cpu(7)
    assert _draws() == low
    assert torch.random.initial_seed() == 7


def test_a_restored_block_leaves_the_streams_as_they_were():
    rng.seed_all(1)
    expected = _draws()
    rng.seed_all(1)
    with rng.restored():
        rng.seed_cpu(99)
        _draws()
    assert _draws() == expected
