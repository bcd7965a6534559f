"""Initial weights: read a checkpoint (or timm's hub), rename timm's keys to ours, and fit it to a network.

`train.pretrained` reaches the job already resolved by the request layer: false, `timm:NAME` (the hub weights of
the timm model NAME) or a file path. A timm checkpoint's format is recognised from its keys, never from a step's
name; whether it fits is decided by comparing every key and shape with the network it is loaded into.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import RoadmapError

HUB = "timm:"

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
    (r"^(stages\.\d+\.blocks\.\d+)\.mlp\.grn\.", r"\1.extra2.0."),  # ConvNeXt V2's GRN, after fc1's GELU
    (r"^(stages\.\d+\.blocks\.\d+)\.gamma$", r"\1.gamma"),
    (r"^head\.norm\.", "head.norm."),
    (r"^head\.fc\.", "head.fc."),
]
# a key that marks each timm format → its renaming rules
FORMATS = {"layer1.0.conv1.weight": RESNET_KEYS, "stages.0.blocks.0.conv_dw.weight": CONVNEXT_KEYS}


def convert_timm_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm ResNet or ConvNeXt state dict's keys to ours."""
    rules = next((rules for marker, rules in FORMATS.items() if marker in state_dict), None)
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
            out[key] = value  # left as is: reported as unexpected if the network has no such key
    return out


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file (a bare state dict, or one under model/state_dict)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RoadmapError(f"train.pretrained: {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise RoadmapError(f"train.pretrained: {path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RoadmapError(f"train.pretrained: {path}: holds no state dict")
    return state


def hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    import timm

    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001 - offline, or the hub refused
        raise RoadmapError(f"train.pretrained: could not fetch {name}'s weights from the hub "
                           f"({type(e).__name__}); give a local file: --pretrained FILE") from None


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], classifier: str, source: str) -> list[str]:
    """Load `state` into `model`. A timm ResNet/ConvNeXt checkpoint is renamed to our keys first. A classifier of
    another class count is left freshly initialised (and said so); any other mismatch is an error that lists the
    first few. Returns what was said."""
    notes = []
    ours = model.state_dict()
    if any(marker in state for marker in FORMATS) and not all(k in ours for k in state):
        state = convert_timm_state_dict(state)
    head = {k for k in state if k.startswith(classifier + ".") or k == classifier} if classifier else set()
    if head and any(k in ours and ours[k].shape != state[k].shape for k in head):
        weight = next(k for k in sorted(head) if k.endswith("weight"))
        notes.append(f"re-initialised the classifier ({classifier}): {source} has {state[weight].shape[0]} classes, "
                     f"the data {ours[weight].shape[0]}")
        state = {k: v for k, v in state.items() if k not in head}
    problems = [f"missing {k}" for k in ours if k not in state and k not in head]
    problems += [f"unexpected {k}" for k in state if k not in ours]
    for k in ours.keys() & state.keys():
        if ours[k].shape != state[k].shape:
            if ours[k].numel() == state[k].numel() and ours[k].squeeze().shape == state[k].squeeze().shape:
                state[k] = state[k].reshape(ours[k].shape)  # timm's Linear 1×1 layers are our 1×1 convs
            else:
                problems.append(f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(ours[k].shape)} here")
    if problems:
        more = f" … and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise RoadmapError(f"{source} does not fit this network: {'; '.join(sorted(problems)[:5])}{more}")
    model.load_state_dict(state, strict=False)
    return notes


def load_initial_weights(model: nn.Module, cfg) -> list[str]:
    """Load `cfg.train.pretrained` (timm:NAME or a file) into a freshly built network; returns what was said."""
    source = cfg.train.pretrained
    classifier = model.pretrained_cfg.get("classifier", "head")  # timm's models and ours say which layer it is
    if isinstance(source, str) and source.startswith(HUB):
        state, where = hub_state_dict(source[len(HUB):]), f"timm's {source[len(HUB):]} weights"
    else:
        state, where = read_checkpoint(source), str(source)
    return [f"loaded {where}", *fit_state_dict(model, state, classifier, where)]


def load_timm_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a timm `resnet50`/`resnet200`/`convnext_tiny`/`convnext_base` state dict into the network built
    from the matching step; fail with the first mismatches when it does not fit."""
    fit_state_dict(model, convert_timm_state_dict(state_dict), classifier="", source="state dict")
    return model
