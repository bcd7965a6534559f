"""device.py: which precision `train.amp` trains in on a given device."""

import pytest
import torch

from convnext_roadmap.device import autocast_dtype


@pytest.mark.parametrize("native, want", [(True, torch.bfloat16), (False, None)])
def test_auto_takes_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native, want):
    # a V100 or a T4: torch.cuda.is_bf16_supported() is True, counting emulation, and False without it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    dtype, note = autocast_dtype("auto", torch.device("cuda"))
    assert dtype == want
    assert (note is None) == native
    if not native:
        assert "this GPU has no native bf16, so it trained in fp32" in note and "train.amp=fp16" in note


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
