"""train/provenance.py: what a run says of itself beside its numbers — hosts, memory layout, versions."""

import platform

import torch

from convnext_roadmap.train import provenance


def test_a_single_process_runs_on_this_host():
    assert provenance.hosts(1) == [platform.node()]


def test_channels_last_is_read_from_the_first_conv_weight():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Conv2d(3, 8, 3))
    assert not provenance.is_channels_last(model)
    assert provenance.is_channels_last(model.to(memory_format=torch.channels_last))


def test_versions_name_what_the_numbers_depend_on():
    import timm

    found = provenance.versions()
    assert found["torch"] == torch.__version__ and found["timm"] == timm.__version__
