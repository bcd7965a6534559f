"""The one residual block. Its constructor arguments are the axes the paper's roadmap moves along."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from timm.layers import DropPath

from .geometry import LAYOUTS
from .imports import Layers
from .layers import conv

BUILT_IN = Layers()  # a block built alone, outside a network, names no layer of the user's


class Block(nn.Module):
    """conv1 → norm1 → act1 → extra1 → conv2 → … → act3 → extra3 → layer scale → drop path → + shortcut → act.

    `layout` says which of conv1..conv3 is the k×k conv and how wide each is (see `geometry.LAYOUTS`); `norm_at` and
    `act_at` say after which convs a norm and an activation run ("output": after the residual add). The k×k conv is
    grouped (`groups`, or "depthwise") and carries the stride. A block that strides or changes width projects its
    shortcut with a conv and a norm. `extras` are (point, make) pairs: make(channels) is a module inserted after
    that conv's norm and activation (extra1..3, empty where none). `layers` makes the norms and activations named.
    """

    def __init__(self, c_in: int, width: int, *, layout: str, kernel_size: int, groups, expansion: int,
                 act: str, act_at: list[str], norm: str, norm_at: list[str], stride: int = 1,
                 layer_scale: float | None = None, drop_path: float = 0.0,
                 shortcut_norm: str = "batchnorm", shortcut_kernel: int = 1, extras=(), layers: Layers = BUILT_IN):
        super().__init__()
        c = c_in
        for i, (spatial, c_out) in enumerate(LAYOUTS[layout](c_in, width, expansion), start=1):
            norm_here = norm if f"conv{i}" in norm_at else "none"
            if spatial:
                g = c if groups == "depthwise" else groups
                self.add_module(f"conv{i}", conv(c, c_out, kernel_size, stride, g, norm_after=norm_here))
            else:
                self.add_module(f"conv{i}", conv(c, c_out, 1, norm_after=norm_here))
            self.add_module(f"norm{i}", layers.norm(norm_here, c_out, "block.norm"))
            self.add_module(f"act{i}", layers.act(act if f"conv{i}" in act_at else "none", "block.act"))
            self.add_module(f"extra{i}", nn.Sequential(*[make(c_out) for at, make in extras if at == f"conv{i}"]))
            c = c_out
        self.gamma = nn.Parameter(torch.full((c,), layer_scale)) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if stride != 1 or c_in != c:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=conv(c_in, c, shortcut_kernel, stride, norm_after=shortcut_norm),
                norm=layers.norm(shortcut_norm, c, "downsample.norm"),
            ))
        else:
            self.shortcut = nn.Identity()
        self.act_out = layers.act(act if "output" in act_at else "none", "block.act")
        self.out_channels = c
        # the shortcut added into the branch's output in place (as timm's ResNet blocks do: a tensor less per block,
        # ~3% of a CPU training step), where no backward needs that output: not after an in-place ReLU, which keeps it,
        # nor after a module of the user's (an extra, or a norm named as module:attr), which may
        users_last = len(self.extra3) > 0 or (":" in norm and "conv3" in norm_at)
        self.add_in_place = (isinstance(self.act3, nn.Identity) and not users_last) or layer_scale is not None

    def zero_init_last(self) -> None:
        """The scale of the branch's last norm to zero, where it has one (timm's ResNet: bn3). Where the branch ends
        in that norm the block starts as its shortcut; where convs with biases follow it (from `fewer_norms` on),
        their biases still pass."""
        for norm in (self.norm3, self.norm2, self.norm1):
            if getattr(norm, "weight", None) is not None:
                nn.init.zeros_(norm.weight)
                return

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.extra1(self.act1(self.norm1(self.conv1(x))))
        x = self.extra2(self.act2(self.norm2(self.conv2(x))))
        x = self.extra3(self.act3(self.norm3(self.conv3(x))))
        if self.gamma is not None:
            x = x * self.gamma.view(1, -1, 1, 1)
        x = self.drop_path(x)
        # and not into a narrower dtype: under CUDA autocast a bf16 branch meets an fp32 shortcut after a LayerNorm
        in_place = self.add_in_place and torch.promote_types(x.dtype, shortcut.dtype) == x.dtype
        return self.act_out(x.add_(shortcut) if in_place else x + shortcut)
