"""Norms and activations chosen by name, and the convs that feed them."""

from __future__ import annotations

import torch.nn as nn
from timm.layers import LayerNorm2d


def make_norm(kind: str, channels: int) -> nn.Module:
    """A norm over the channels of an NCHW tensor. LayerNorm's eps follows ConvNeXt (1e-6)."""
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return LayerNorm2d(channels, eps=1e-6)
    return nn.Identity()


def make_act(kind: str) -> nn.Module:
    return {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "none": nn.Identity}[kind]()


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, norm_after: str = "none") -> nn.Conv2d:
    """A conv padded to keep the size (up to the stride); none when its patches do not overlap (kernel ≤ stride).
    A BatchNorm right after it makes a bias redundant."""
    padding = 0 if kernel <= stride else (kernel - 1) // 2
    return nn.Conv2d(c_in, c_out, kernel, stride, padding=padding, groups=groups,
                     bias=norm_after != "batchnorm")
