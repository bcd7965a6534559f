"""Starting weights: a checkpoint file or timm's hub, fitted to a network key by key."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import RoadmapError
from .timm_keys import FORMATS, convert_timm_state_dict


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


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], classifier: str, source: str) -> list[str]:
    """Load `state` into `model`. A timm ResNet/ConvNeXt checkpoint is renamed to our keys first. A classifier of
    another class count is left freshly initialised (and said so); any other mismatch is an error that lists the
    first few. Returns what was said."""
    notes = []
    ours = model.state_dict()
    if any(marker in state for marker, _ in FORMATS.values()) and not all(k in ours for k in state):
        state = convert_timm_state_dict(state)
    head = {k for k in state if k.startswith(classifier + ".") or k == classifier}
    if head and any(k in ours and ours[k].shape != state[k].shape for k in head):
        theirs = next(state[k].shape[0] for k in sorted(head) if k.endswith("weight"))
        notes.append(f"re-initialised the classifier ({classifier}): {source} has {theirs} classes, "
                     f"the data {ours[next(k for k in sorted(head) if k.endswith('weight'))].shape[0]}")
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
