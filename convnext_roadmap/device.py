"""Which device and precision a process trains on: `--device` parsed and checked, and the autocast choice."""

from __future__ import annotations

import torch

from .errors import RoadmapError


def parse_device(device: str) -> torch.device | None:
    """`--device` as torch reads it (None for auto), or one line naming the flag."""
    if device == "auto":
        return None
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):  # what the training loop and its tests know
        raise RoadmapError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return parsed


def pick_device(device: str) -> torch.device:
    """The device to train on here: `--device`, or CUDA where there is one."""
    parsed = parse_device(device)
    if parsed is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise RoadmapError(f"--device {device}: no CUDA device is available here")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise RoadmapError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def use_amp(amp: bool | str, device: torch.device) -> tuple[bool, str | None]:
    """Whether to train under bf16 autocast, and a note when `auto` chose fp32."""
    if amp != "auto":
        return bool(amp), None
    if device.type == "cuda":
        native, where = torch.cuda.is_bf16_supported(), "this GPU"
    else:
        native, where = torch.ops.mkldnn._is_mkldnn_bf16_supported(), "this CPU"
    return native, None if native else (f"train.amp=auto: {where} has no native bf16, so it trained in fp32 "
                                        f"(train.amp=true forces bf16 autocast)")
