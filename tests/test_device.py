"""device.py: the precision `train.amp` trains in on a given device, the GPU a rank takes, the CPUs a process has."""

import pytest
import torch

from convnext_roadmap.device import autocast_dtype


def _v100_and_h100(monkeypatch, current: int = 0) -> list[int]:
    """Stand-ins for a node with a V100 (GPU 0: compute capability 7.0, bf16 only emulated) beside an H100 (GPU 1:
    9.0, native bf16); CUDA's current device is `current`. Returns the list `set_device` appends to."""
    from types import SimpleNamespace

    from torch._utils import _get_device_index

    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: made_current[-1] if made_current else current)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made_current.append(_get_device_index(d, optional=False)))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: SimpleNamespace(
        major=(7, 9)[torch.cuda.current_device() if d is None else _get_device_index(d, optional=True)]))
    monkeypatch.setattr(torch.version, "hip", None)
    return made_current


@pytest.mark.parametrize("current", [0, 1])
def test_auto_takes_bf16_where_the_runs_own_gpu_computes_it_natively(monkeypatch, current):
    # whichever GPU is current, the run's own decides: the H100 bf16, the V100 (is_bf16_supported() is True there,
    # counting emulation) fp32 with a note
    _v100_and_h100(monkeypatch, current)
    assert autocast_dtype("auto", torch.device("cuda", 1)) == (torch.bfloat16, None)
    dtype, note = autocast_dtype("auto", torch.device("cuda", 0))
    assert dtype is None and "this GPU has no native bf16, so it trained in fp32" in note and "train.amp=fp16" in note
    # `cuda` without a number is the current one
    assert autocast_dtype("auto", torch.device("cuda"))[0] == (None, torch.bfloat16)[current]


def test_an_in_process_run_on_cuda_n_makes_its_gpu_current_first(monkeypatch):
    from convnext_roadmap.device import train_device

    made_current = _v100_and_h100(monkeypatch, current=0)
    assert train_device("cuda:1", 1) == torch.device("cuda", 1) and made_current == [1]
    assert autocast_dtype("auto", torch.device("cuda"))[0] == torch.bfloat16  # asked after: the H100


@pytest.mark.parametrize("amp, want", [(True, torch.bfloat16), ("bf16", torch.bfloat16), ("fp16", torch.float16),
                                       (False, None)])
def test_an_explicit_choice_is_taken_on_any_device(amp, want):
    for device in ("cpu", "cuda"):
        assert autocast_dtype(amp, torch.device(device)) == (want, None)


@pytest.mark.parametrize("world, local_rank, want", [(1, 0, None), (2, 3, 1)])
def test_a_process_alone_keeps_the_current_gpu_and_a_rank_takes_its_own(monkeypatch, world, local_rank, want):
    # torch.cuda.set_device takes only an indexed device: a single-process run on `cuda` must not call it
    from torch._utils import _get_device_index

    from convnext_roadmap.device import train_device

    set_to = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_to.append(_get_device_index(d, optional=False)))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    device = train_device("auto", world)
    assert device.type == "cuda" and set_to == ([] if want is None else [want]) and device.index == want


@pytest.mark.parametrize("env, affinity, want", [
    ({"ROADMAP_CPUS": "3", "SLURM_CPUS_PER_TASK": "10"}, 16, 3),  # a local launch's share comes first
    ({"SLURM_CPUS_PER_TASK": "10"}, 64, 10),                      # a SLURM task's cpus-per-task
    ({"LOCAL_WORLD_SIZE": "4"}, 16, 4),                            # torchrun's 4 ranks share the affinity
    ({}, 6, 6)])
def test_workers_auto_is_the_cpus_this_process_may_use(monkeypatch, env, affinity, want):
    import os

    from convnext_roadmap.device import loader_workers

    for name in ("ROADMAP_CPUS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    assert loader_workers("auto") == want and loader_workers(5) == 5


def test_cudnn_benchmark_and_tf32_follow_the_recipe_on_cuda_only():
    from types import SimpleNamespace

    from convnext_roadmap.device import configure_backends

    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        configure_backends(SimpleNamespace(cudnn_benchmark=True, tf32=True), torch.device("cpu"))
        assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == before[:2]
        configure_backends(SimpleNamespace(cudnn_benchmark=True, tf32=True), torch.device("cuda"))
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        configure_backends(SimpleNamespace(cudnn_benchmark=False, tf32=False), torch.device("cuda"))
        assert not (torch.backends.cudnn.benchmark or torch.backends.cuda.matmul.allow_tf32
                    or torch.backends.cudnn.allow_tf32)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_an_images_seed_reaches_numpy_whole():
    # numpy's global seed takes 32 bits: seeds differing only above them (another epoch, another rank) must
    # still draw differently, as timm's RandAugment picks its ops from numpy
    import numpy as np

    from convnext_roadmap.rng import seed_cpu

    draws = []
    for seed in (5, 5 + 2**32, 5 + 2**40):
        seed_cpu(seed)
        draws.append(np.random.randint(0, 2**31, 4).tolist())
    assert draws[0] != draws[1] != draws[2] != draws[0]
