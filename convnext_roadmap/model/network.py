"""The network as a pure function of its config: stem → stages (downsample + blocks) → head."""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..config import Config, RoadmapNet, TimmNet
from .block import Block
from .geometry import stage_plan, stem_width
from .imports import Layers
from .layers import conv


def make_stem(cfg: Config, layers: Layers) -> nn.Sequential:
    s = cfg.stem
    width = stem_width(cfg)
    return nn.Sequential(OrderedDict(
        conv=conv(3, width, s.kernel_size, s.stride, norm_after=s.norm),
        norm=layers.norm(s.norm, width, "stem.norm"),
        act=layers.act(s.act, "stem.act"),
        pool=nn.MaxPool2d(3, 2, padding=1) if s.pool == "max" else nn.Identity(),
    ))


def make_downsample(c_in: int, c_out: int, norm: str, kernel_size: int, layers: Layers) -> nn.Sequential:
    """A separate downsampling layer between stages: norm, then a stride-2 conv."""
    return nn.Sequential(OrderedDict(
        norm=layers.norm(norm, c_in, "downsample.norm"),
        conv=conv(c_in, c_out, kernel_size, stride=2),
    ))


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[Block]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    """Global average pooling → norm → dropout → linear. A norm of the user's gets the pooled features as NCHW
    (N×C×1×1), as every norm it names does."""

    def __init__(self, c_in: int, num_classes: int, norm: str, dropout: float, layers: Layers):
        super().__init__()
        built_in = {"batchnorm": lambda: nn.BatchNorm1d(c_in), "layernorm": lambda: nn.LayerNorm(c_in, eps=1e-6),
                    "none": nn.Identity}
        self.nchw = norm not in built_in
        self.norm = layers.norm(norm, c_in, "head.norm") if self.nchw else built_in[norm]()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.mean((2, 3), keepdim=True)).flatten(1) if self.nchw else self.norm(x.mean((2, 3)))
        return self.fc(self.drop(x))


class Network(nn.Module):
    pretrained_cfg = {"classifier": "head.fc"}  # timm's convention: which layer a new number of classes replaces

    def __init__(self, cfg: RoadmapNet, num_classes: int = 1000):
        super().__init__()
        b, ds = cfg.block, cfg.downsample
        self.layers = layers = Layers(cfg)
        extras = [(e.at, functools.partial(layers.extra, e.module, args=e.args, key=f"block.extras[{i}].module"))
                  for i, e in enumerate(b.extras)]
        plan = stage_plan(cfg)
        rates = torch.linspace(0, b.drop_path, sum(depth for *_, depth in plan)).tolist()
        self.stem = make_stem(cfg, layers)
        c, stages = stem_width(cfg), []
        for i, (first_in, width, out, depth) in enumerate(plan):
            stride = 1 if i == 0 else 2
            separate = ds.type == "separate" and i > 0
            downsample = make_downsample(c, out, ds.norm, ds.kernel_size, layers) if separate else nn.Identity()
            c = first_in if separate else c
            blocks = []
            for j in range(depth):
                blocks.append(Block(
                    c, width, layout=b.layout, kernel_size=b.kernel_size, groups=b.groups, expansion=b.expansion,
                    act=b.act, act_at=b.act_at, norm=b.norm, norm_at=b.norm_at,
                    stride=stride if (j == 0 and ds.type == "in_block") else 1,
                    layer_scale=b.layer_scale, drop_path=rates.pop(0),
                    shortcut_norm=ds.norm, shortcut_kernel=ds.kernel_size if ds.type == "in_block" else 1,
                    extras=extras, layers=layers,
                ))
                c = blocks[-1].out_channels
            stages.append(Stage(downsample, blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = c
        self.head = Head(c, num_classes, cfg.head.norm, cfg.head.dropout, layers)
        INITS[b.init](self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _trunc_normal(m: nn.Module) -> None:
    # The paper trains every step with the same recipe, truncated-normal init included (Table 5).
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _resnet(network: nn.Module) -> None:
    # timm's ResNet.init_weights: the convs' weights Kaiming-normal (fan-out), the rest as torch made it, and each
    # block's branch starting at zero (its last norm's scale)
    for m in network.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, Block):
            m.zero_init_last()


INITS = {"trunc_normal": lambda net: net.apply(_trunc_normal), "resnet": _resnet}  # block.init


@functools.singledispatch
def build_model(cfg: Config, num_classes: int = 1000) -> nn.Module:
    """The network the config describes, freshly initialised: the roadmap's, or the timm model it names."""
    raise TypeError(f"not a config: {type(cfg).__name__}")


@build_model.register
def _(cfg: RoadmapNet, num_classes: int = 1000) -> nn.Module:
    return Network(cfg, num_classes)


@build_model.register
def _(cfg: TimmNet, num_classes: int = 1000) -> nn.Module:
    import timm

    extra = {"img_size": cfg.timm.img_size} if adapts_input_size(cfg) else {}
    return timm.create_model(cfg.timm.name, pretrained=False, num_classes=num_classes,
                             drop_path_rate=cfg.timm.drop_path, **extra)


def fixed_input_size(name: str) -> int | None:
    """The one input size a timm model is made for (ViT, Swin), or None for a model that takes any size."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    if pretrained_cfg is None or not pretrained_cfg.fixed_input_size:
        return None
    return pretrained_cfg.input_size[-1]


def adapts_input_size(cfg: TimmNet) -> bool:
    """Whether timm is asked to build a model made for one input size for another (`timm.img_size`)."""
    return bool(cfg.timm.img_size) and fixed_input_size(cfg.timm.name) is not None


@functools.singledispatch
def input_size_note(cfg: Config) -> str | None:
    """What a run says when timm builds its model for another input size than the one it was made for."""
    raise TypeError(f"not a config: {type(cfg).__name__}")


@input_size_note.register
def _(cfg: RoadmapNet) -> str | None:
    return None  # the roadmap's network takes any size


@input_size_note.register
def _(cfg: TimmNet) -> str | None:
    if adapts_input_size(cfg):
        return f"timm adapted {cfg.timm.name} to {cfg.timm.img_size}×{cfg.timm.img_size} input"
    return None
