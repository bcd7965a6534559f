"""The network's geometry as numbers: what each block layout's convs are, each stage's widths, the width scaling.

Pure Python (no torch), so that the config's validators can check a network before anything is built.
"""

from __future__ import annotations

# The three convs of each block layout as (is it the k×k conv, output width), given the block's input width c,
# its stage width w and the expansion e. The k×k conv is the one that is grouped and carries the stride.
LAYOUTS = {
    "bottleneck": lambda c, w, e: [(False, w), (True, w), (False, w * e)],  # ResNet: 1×1 reduce, k×k, 1×1 expand
    "inverted": lambda c, w, e: [(False, w * e), (True, w * e), (False, w)],  # MobileNetV2: 1×1 expand, k×k, reduce
    "dw_first": lambda c, w, e: [(True, c), (False, w * e), (False, w)],  # ConvNeXt: k×k, 1×1 expand, 1×1 reduce
}


def scale_width(width: int, mult: float, divisor: int = 8) -> int:
    """Scale a width and round it to a multiple of `divisor` (unchanged when mult is 1)."""
    if mult == 1.0:
        return width
    return max(divisor, int(round(width * mult / divisor)) * divisor)


def scaled_depths(stages) -> list[int]:
    return [max(1, round(d * stages.depth_mult)) for d in stages.depths]


def stem_width(cfg) -> int:
    return scale_width(cfg.stem.width, cfg.stages.width_mult)


def stage_plan(cfg) -> list[tuple[int, int, int, int]]:
    """Per stage: (input width of its first block, stage width, output width, depth), at the config's scale."""
    plan, c_in = [], stem_width(cfg)
    widths = [scale_width(w, cfg.stages.width_mult) for w in cfg.stages.widths]
    for width, depth in zip(widths, scaled_depths(cfg.stages)):
        out = LAYOUTS[cfg.block.layout](c_in, width, cfg.block.expansion)[-1][1]
        first_in = out if cfg.downsample.type == "separate" and plan else c_in
        plan.append((first_in, width, out, depth))
        c_in = out
    return plan


def grouped_conv_channels(cfg) -> set[int]:
    """The channel counts of every k×k conv in the network (for the groups check)."""
    channels = set()
    for first_in, width, out, _ in stage_plan(cfg):
        for c in {first_in, out}:
            channels |= {ch for spatial, ch in LAYOUTS[cfg.block.layout](c, width, cfg.block.expansion) if spatial}
    return channels
