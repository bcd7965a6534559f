"""Load timm's ResNet and ConvNeXt state dicts into the roadmap's network, by renaming keys.

The format is recognised from the checkpoint's keys, never from a step's name; whether it fits is decided by
comparing every key and shape with the network it is loaded into.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..errors import RoadmapError

# (pattern, replacement) applied in order to each timm key; the first match wins.
RESNET_KEYS = [
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.norm."),
    (r"^layer(\d+)\.(\d+)\.conv(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.conv{m[3]}."),
    (r"^layer(\d+)\.(\d+)\.bn(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.norm{m[3]}."),
    (r"^layer(\d+)\.(\d+)\.downsample\.0\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.shortcut.conv."),
    (r"^layer(\d+)\.(\d+)\.downsample\.1\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.shortcut.norm."),
    (r"^fc\.", "head.fc."),
]
CONVNEXT_KEYS = [
    (r"^stem\.0\.", "stem.conv."),
    (r"^stem\.1\.", "stem.norm."),
    (r"^stages\.(\d+)\.downsample\.0\.", r"stages.\1.downsample.norm."),
    (r"^stages\.(\d+)\.downsample\.1\.", r"stages.\1.downsample.conv."),
    (r"^(stages\.\d+\.blocks\.\d+)\.conv_dw\.", r"\1.conv1."),
    (r"^(stages\.\d+\.blocks\.\d+)\.norm\.", r"\1.norm1."),
    (r"^(stages\.\d+\.blocks\.\d+)\.mlp\.fc1\.", r"\1.conv2."),
    (r"^(stages\.\d+\.blocks\.\d+)\.mlp\.fc2\.", r"\1.conv3."),
    (r"^(stages\.\d+\.blocks\.\d+)\.gamma$", r"\1.gamma"),
    (r"^head\.norm\.", "head.norm."),
    (r"^head\.fc\.", "head.fc."),
]
FORMATS = {"resnet": ("layer1.0.conv1.weight", RESNET_KEYS), "convnext": ("stages.0.blocks.0.conv_dw.weight", CONVNEXT_KEYS)}


def convert_timm_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm ResNet or ConvNeXt state dict's keys to ours."""
    rules = next((rules for marker, rules in FORMATS.values() if marker in state_dict), None)
    if rules is None:
        raise RoadmapError("state dict: neither a timm ResNet (layer1.0.conv1.weight) nor a timm ConvNeXt "
                           "(stages.0.blocks.0.conv_dw.weight) checkpoint")
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            out[key] = value  # left as is: reported below as unexpected if the network has no such key
    return out


def load_timm_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a timm `resnet50`/`resnet200`/`convnext_tiny`/`convnext_base` state dict into the network built
    from the matching step; fail with the first mismatches when it does not fit."""
    from .pretrained import fit_state_dict

    theirs = convert_timm_state_dict(state_dict)
    fit_state_dict(model, theirs, classifier="", source="state dict")
    return model
