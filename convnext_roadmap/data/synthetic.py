"""The embedded synthetic set: 10 classes (5 shapes × 2 textures) drawn once into the cache, and `draw`, one image
of it (the tests draw real-looking images with it too)."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["disc", "square", "triangle", "ring", "cross"]
TEXTURES = ["stripes", "dots"]
# v2: drawn at 32², where the proxy trains: its textures stay resolved. v3: 150 validation images per class (the
# same training images), so that the validation noise of one epoch stays below the levelled-off criterion's 1.5
SYNTHETIC_VERSION = "v3"


def draw(shape: str, texture: str, rng: random.Random, size: int) -> Image.Image:
    """One image: a textured shape of random size, place and colours on a noisy textured background. Its class
    needs the global shape and the local texture both; the background's distracting texture is the other one."""
    fg, bg = [tuple(rng.randrange(40, 216) for _ in range(3)) for _ in range(2)]
    while sum(abs(a - b) for a, b in zip(fg, bg)) < 150:
        fg = tuple(rng.randrange(0, 256) for _ in range(3))

    def textured(colour, kind, period, angle):
        layer = Image.new("RGB", (size, size), tuple(c // 2 for c in colour))
        d = ImageDraw.Draw(layer)
        if kind == "stripes":
            for k in range(-size, 2 * size, period):
                pts = [(k, 0), (k + size * angle, size)]
                d.line(pts, fill=colour, width=max(1, period // 2))
        else:
            r = max(1, period // 3)
            for x in range(0, size, period):
                for y in range(0, size, period):
                    d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        return layer

    other = TEXTURES[1 - TEXTURES.index(texture)]
    img = textured(bg, other, rng.randrange(5, 9), rng.uniform(-0.5, 0.5))
    fill = textured(fg, texture, rng.randrange(4, 7), rng.uniform(-0.5, 0.5))
    mask = Image.new("L", (size, size), 0)
    m = ImageDraw.Draw(mask)
    r = rng.uniform(0.22, 0.36) * size
    cx, cy = (rng.uniform(r + 2, size - r - 2) for _ in range(2))
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disc":
        m.ellipse(box, fill=255)
    elif shape == "square":
        m.regular_polygon((cx, cy, r), 4, rotation=rng.uniform(0, 90), fill=255)
    elif shape == "triangle":
        m.regular_polygon((cx, cy, r), 3, rotation=rng.uniform(0, 120), fill=255)
    elif shape == "ring":
        m.ellipse(box, fill=255)
        q = r * 0.55
        m.ellipse([cx - q, cy - q, cx + q, cy + q], fill=0)
    else:  # cross
        w = r * 0.35
        m.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        m.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
    img.paste(fill, (0, 0), mask)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_synthetic(root: Path, train_per_class: int = 300, val_per_class: int = 150, size: int = 32,
                   seed: int = 0) -> Path:
    """Write the synthetic set once, as PNG files in ImageFolder layout; a finished set is reused as is."""
    if (root / "DONE").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".synthetic-"))
    rng = random.Random(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for shape in SHAPES:
            for texture in TEXTURES:
                folder = tmp / split / f"{shape}_{texture}"
                folder.mkdir(parents=True)
                for i in range(n):
                    draw(shape, texture, rng, size).save(folder / f"{i:04d}.png")
    (tmp / "DONE").write_text(f"synthetic {SYNTHETIC_VERSION}: {len(SHAPES) * len(TEXTURES)} classes\n")
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root
