"""Augmentation of batches as tensors: timm's random-resized crop, flip and RandAugment of whole uint8 batches on
the CPU (the tensor pipeline's), and the last stage of a batch made for another device — the copy, normalizing and
random erasing there — each sample with its own draws from `order.batch_generator`."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .order import Purpose, batch_generator

RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


def parse_rand_augment(spec: str) -> dict:
    """timm's RandAugment spec, e.g. `rand-m9-mstd0.5-inc1`: magnitude m, layers n, magnitude noise mstd, its upper
    bound mmax, the increasing op set inc, the chance p that each chosen op is applied."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"got {spec!r}, expected a RandAugment spec (rand-…): the tensor pipeline has no other")
    out = {"m": 10.0, "n": 2, "mstd": 0.0, "mmax": 10.0, "inc": 0, "p": 0.5}
    for part in parts[1:]:
        key = next((k for k in ("mstd", "mmax", "inc", "m", "n", "p") if part.startswith(k)), None)
        try:
            out[key] = type(out[key])(float(part[len(key):])) if key else None
        except ValueError:
            key = None
        if key is None:
            raise ValueError(f"got {spec!r}, whose '{part}' the tensor pipeline cannot read (it takes m, n, mstd, "
                             f"mmax, inc and p)")
    return out


def _theta(a, b, c, d, e, f) -> torch.Tensor:
    return torch.stack([torch.stack([a, b, c], 1), torch.stack([d, e, f], 1)], 1)


def _rotate(m, s):
    angle, zero = torch.deg2rad(30 * m * s), torch.zeros_like(m)
    return _theta(angle.cos(), -angle.sin(), zero, angle.sin(), angle.cos(), zero)


def _shear(m, s, axis):  # PIL shears about the top-left corner: x' = x + level·y
    level, one, zero = 0.3 * m * s, torch.ones_like(m), torch.zeros_like(m)
    return _theta(one, level, level, zero, one, zero) if axis == 0 else _theta(one, zero, zero, level, one, level)


def _translate(m, s, axis):  # a fraction of the size (0.45 at full magnitude), 2× in normalized coordinates
    shift, one, zero = 0.9 * m * s, torch.ones_like(m), torch.zeros_like(m)
    return _theta(one, zero, shift, zero, one, zero) if axis == 0 else _theta(one, zero, zero, zero, one, shift)


# the geometric ops as affine maps of normalized output coordinates to input coordinates
GEOMETRIC = {"Rotate": _rotate, "ShearX": lambda m, s: _shear(m, s, 0), "ShearY": lambda m, s: _shear(m, s, 1),
             "TranslateXRel": lambda m, s: _translate(m, s, 0), "TranslateYRel": lambda m, s: _translate(m, s, 1)}


class BatchAugment:
    """uint8 batches (B×3×S×S) → cropped, flipped and RandAugment-ed batches (B×3×img×img), each sample with its own
    draws. `uint8`: as uint8, what timm's transforms give its prefetcher (for a GPU run: `DeviceBatches` normalizes
    and erases there); else normalized and randomly erased here, where a CPU run trains."""

    def __init__(self, data_cfg, uint8: bool = False):
        d = data_cfg
        self.size, self.scale, self.mode = d.img_size, tuple(d.crop_scale), d.interpolation
        self.uint8, self.erasing = uint8, d.random_erasing
        self.rand = parse_rand_augment(d.auto_augment) if d.auto_augment else None
        self.mean = torch.tensor(d.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(d.std).view(1, 3, 1, 1)
        self.fill = torch.tensor([round(m * 255) for m in d.mean]).view(1, 3, 1, 1).float()  # timm's img_mean

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = x.float()
        grid = F.affine_grid(self._crop_and_flip(len(x), x.shape[-1], g), [len(x), 3, self.size, self.size],
                             align_corners=False)
        x = F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False).clamp(0, 255)
        if self.rand is not None:
            x = self._rand_augment(x, g)
        if self.uint8:
            return x.round_().clamp_(0, 255).to(torch.uint8)  # a PIL image's integers, a quarter of float32's bytes
        x = (x / 255 - self.mean) / self.std
        return erase(x, self.erasing, g) if self.erasing > 0 else x

    def _crop_and_flip(self, n: int, side: int, g: torch.Generator) -> torch.Tensor:
        """timm's RandomResizedCrop draws (area in scale, log-uniform ratio in [3/4, 4/3], the first of 10 tries
        that fits, else the whole image) and a flip with p = 0.5, as affine maps onto the stored image."""
        area = side * side * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, 10, generator=g))
        ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, 10, generator=g))
        w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        fits = (w <= side) & (h <= side)
        first = fits.float().argmax(1, keepdim=True)
        w = torch.where(fits.any(1), w.gather(1, first)[:, 0], torch.tensor(float(side)))
        h = torch.where(fits.any(1), h.gather(1, first)[:, 0], torch.tensor(float(side)))
        top = (torch.rand(n, generator=g) * (side - h + 1)).floor()
        left = (torch.rand(n, generator=g) * (side - w + 1)).floor()
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = flip * w / side, (2 * left + w) / side - 1
        theta[:, 1, 1], theta[:, 1, 2] = h / side, (2 * top + h) / side - 1
        return theta

    def _rand_augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """timm's RandAugment: n ops drawn with replacement from the op set, each applied with chance p, at a
        magnitude drawn around m (mstd) and clipped to [0, mmax]; a random sign where the op has one. The
        geometric ops of one layer share a single resampling (one affine map per sample)."""
        r, n = self.rand, len(x)
        for _ in range(r["n"]):
            op = torch.randint(len(RAND_OPS), (n,), generator=g)
            apply = torch.rand(n, generator=g) < r["p"]
            if r["mstd"] > 100:  # timm: a magnitude drawn uniformly in [0, m]
                mag = (r["m"] * torch.rand(n, generator=g)).clamp(0, r["mmax"]) / 10
            else:
                mag = (r["m"] + r["mstd"] * torch.randn(n, generator=g)).clamp(0, r["mmax"]) / 10
            sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
            # samples sorted by op (those that skip this layer last), so that each op works on one slice
            key = torch.where(apply, op, len(RAND_OPS))
            order = torch.argsort(key, stable=True)
            counts = torch.bincount(key, minlength=len(RAND_OPS) + 1).tolist()
            xs = list(torch.split(x[order], counts))
            ms, ss = torch.split(mag[order], counts), torch.split(sign[order], counts)
            moved = [k for k, name in enumerate(RAND_OPS) if name in GEOMETRIC and counts[k]]
            if moved:
                theta = torch.cat([GEOMETRIC[RAND_OPS[k]](ms[k], ss[k]) for k in moved])
                warped = self._affine(torch.cat([xs[k] for k in moved]), theta).clamp(0, 255)
                for k, part in zip(moved, torch.split(warped, [counts[k] for k in moved])):
                    xs[k] = part
            for k, name in enumerate(RAND_OPS):
                if counts[k] and name not in GEOMETRIC:
                    xs[k] = getattr(self, f"_{name.lower()}")(xs[k], ms[k], ss[k]).clamp(0, 255)
            x = torch.empty_like(x).index_copy_(0, order, torch.cat(xs))
        return x

    # The ops, on float images in [0, 255], as PIL computes them; `m` is the level in [0, 1], one per sample.
    def _enhance(self, m, s):
        return (1 + 0.9 * m * s).clamp_min(0.1) if self.rand["inc"] else 1.8 * m + 0.1

    def _autocontrast(self, x, m, s):
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) * 255 / (hi - lo).clamp_min(1e-6), x)

    def _equalize(self, x, m, s):
        """PIL's ImageOps.equalize, per channel: a lookup table from the histogram without its last bin."""
        k = len(x)
        q = x.round().clamp(0, 255).long().view(k * 3, -1)
        hist = torch.zeros(k * 3, 256).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
        last = 255 - (hist.flip(1) > 0).float().argmax(1, keepdim=True)
        step = ((hist.sum(1, keepdim=True) - hist.gather(1, last)) / 255).floor()
        before = hist.cumsum(1) - hist
        lut = ((step / 2).floor() + before).div(step.clamp_min(1)).floor().clamp(max=255)
        lut = torch.where(step > 0, lut, torch.arange(256.0).expand_as(lut))
        return lut.gather(1, q).view_as(x)

    def _invert(self, x, m, s):
        return 255 - x

    def _posterize(self, x, m, s):
        bits = (4 - (4 * m).floor()) if self.rand["inc"] else (4 * m).floor()
        shift = (2 ** (8 - bits)).view(-1, 1, 1, 1)  # 0 bits keep nothing: black, as timm's op always did
        return (x.floor() / shift).floor() * shift

    def _solarize(self, x, m, s):
        level = (256 * m).floor().clamp(max=256)
        thresh = (256 - level if self.rand["inc"] else level).view(-1, 1, 1, 1)
        return torch.where(x >= thresh, 255 - x, x)

    def _solarizeadd(self, x, m, s):
        add = (110 * m).floor().clamp(max=128).view(-1, 1, 1, 1)
        return torch.where(x < 128, (x + add).clamp(max=255), x)

    def _blend(self, degenerate, x, m, s):
        f = self._enhance(m, s).view(-1, 1, 1, 1)
        return degenerate + f * (x - degenerate)

    @staticmethod
    def _gray(x):
        return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)

    def _color(self, x, m, s):
        return self._blend(self._gray(x), x, m, s)

    def _contrast(self, x, m, s):
        return self._blend((self._gray(x).mean((1, 2, 3), keepdim=True) + 0.5).floor(), x, m, s)

    def _brightness(self, x, m, s):
        return self._blend(torch.zeros_like(x), x, m, s)

    def _sharpness(self, x, m, s):
        kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]).div(13).expand(3, 1, 3, 3)
        smooth = x.clone()
        smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=3)  # PIL leaves the border as it is
        return self._blend(smooth, x, m, s)

    def _affine(self, x, theta):
        """Resample each image at its affine map of the output (normalized coordinates); outside is the fill."""
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x - self.fill, grid, mode=self.mode, padding_mode="zeros",
                             align_corners=False) + self.fill


def erase(x: torch.Tensor, probability: float, g: torch.Generator, noise: torch.Generator | None = None):
    """timm's RandomErasing (mode pixel, one box) on a normalized batch, in place: with chance p, a box of 2-33% of
    the image, log-uniform aspect in [0.3, 3.3], the first of 10 tries that fits, filled with normal noise. The
    boxes are drawn from `g` (on the CPU), the noise from `noise` on x's device (default: `g`)."""
    n, _, hgt, wid = x.shape
    chosen = torch.rand(n, generator=g) < probability
    area = hgt * wid * (0.02 + (1 / 3 - 0.02) * torch.rand(n, 10, generator=g))
    ratio = torch.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * torch.rand(n, 10, generator=g))
    h, w = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    fits = (w < wid) & (h < hgt)
    first = fits.float().argmax(1, keepdim=True)
    h, w = h.gather(1, first), w.gather(1, first)
    top = (torch.rand(n, 1, generator=g) * (hgt - h + 1)).floor()
    left = (torch.rand(n, 1, generator=g) * (wid - w + 1)).floor()
    # which samples are erased is known here, on the CPU: a batch on a GPU is never waited for. The boxes go over
    # in one copy, from pinned memory, so that it does not wait for the device either
    erased = (chosen & fits.any(1) & (h[:, 0] > 0) & (w[:, 0] > 0)).nonzero()[:, 0]
    boxes = torch.stack([erased, top[erased, 0].long(), left[erased, 0].long(), h[erased, 0].long(),
                         w[erased, 0].long()])
    if x.is_cuda:
        boxes = boxes.pin_memory()
    erased, top, left, h, w = boxes.to(x.device, non_blocking=True)
    top, left, h, w = (t.view(-1, 1) for t in (top, left, h, w))
    rows = torch.arange(hgt, device=x.device).view(1, -1)
    cols = torch.arange(wid, device=x.device).view(1, -1)
    inside = ((rows >= top) & (rows < top + h)).unsqueeze(2) & ((cols >= left) & (cols < left + w)).unsqueeze(1)
    fill = torch.randn((len(erased), *x.shape[1:]), generator=noise or g, device=x.device, dtype=x.dtype)
    x[erased] = torch.where(inside.unsqueeze(1), fill, x[erased])
    return x


class DeviceBatches:
    """A loader's uint8 batches as normalized float batches on `device`, randomly erased with chance `erasing`:
    timm's PrefetchLoader (the copy on a side stream on CUDA, the next batch's while the current one trains,
    normalization and erasing on the device), with the erasing drawn from (seed, epoch, rank) rather than from
    the global streams, which the network draws from too, so that seed k of every network sees the same boxes."""

    def __init__(self, loader, data_cfg, device: torch.device, seed: int = 0, rank: int = 0, erasing: float = 0.0):
        self.loader, self.device, self.seed, self.rank, self.erasing = loader, device, seed, rank, erasing
        self.mean = torch.tensor([255 * m for m in data_cfg.mean], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([255 * s for s in data_cfg.std], device=device).view(1, 3, 1, 1)
        self.epoch, self.stream, self.start, self.position = 0, None, None, None

    def set_epoch(self, epoch: int, position: dict | None = None) -> None:
        """The epoch to give, from its first batch or from `position` (a `position` of this loader's)."""
        self.loader.set_epoch(epoch, position["loader"] if position else None)
        self.epoch, self.start = epoch, position

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def _ready(self, x, y, g, noise):
        x = x.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        y = y.to(self.device, non_blocking=True)
        return (erase(x, self.erasing, g, noise) if self.erasing > 0 else x), y

    def __iter__(self):
        """The loader's batches, ready one ahead; after each, `position` says where the next begins (the loader's
        position and the erasing streams' states when that batch was made)."""
        g = batch_generator(self.seed, self.epoch, self.rank, Purpose.ERASING_BOXES)
        noise = batch_generator(self.seed, self.epoch, self.rank, Purpose.ERASING_NOISE, self.device)
        if self.start is not None:
            g.set_state(self.start["boxes"])
            noise.set_state(self.start["noise"])
            self.start = None
        cuda = self.device.type == "cuda"
        if cuda and self.stream is None:  # one for the loader's life: the allocator pools memory per stream
            self.stream = torch.cuda.Stream(self.device)
        consumer = torch.cuda.current_stream(self.device) if cuda else None
        pending = None
        for x, y in self.loader:
            if cuda:  # memory the consumer freed may be reused below: not before its queued work is done
                self.stream.wait_stream(consumer)
            with torch.cuda.stream(self.stream) if cuda else nullcontext():
                batch = self._ready(x, y, g, noise)
            # the generators' states are CPU tensors, read without waiting for the device
            after = {"loader": getattr(self.loader, "position", None), "boxes": g.get_state(),
                     "noise": noise.get_state()}
            if pending is not None:
                self.position = pending[1]
                yield pending[0]
            if cuda:
                consumer = torch.cuda.current_stream(self.device)
                consumer.wait_stream(self.stream)
                for t in batch:  # made on the side stream, used on the consumer's
                    t.record_stream(consumer)
            pending = batch, after
        if pending is not None:
            self.position = pending[1]
            yield pending[0]
