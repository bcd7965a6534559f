"""Complexity and speed: FLOPs (fvcore) and parameters, counted once per config and cached; throughput and peak
memory, measured side by side in `bench`."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis

from .config import Config, TimmNet, parse
from .resources import atomic_write, cache_dir


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_scale(cfg: Config) -> Config:
    """The same network at the paper's scale: width and depth multipliers back to 1, a timm model at its own
    input size."""
    if isinstance(cfg, TimmNet):
        return cfg.model_copy(update={"timm": cfg.timm.model_copy(update={"img_size": None})})
    return cfg.model_copy(update={"stages": cfg.stages.model_copy(update={"depth_mult": 1.0, "width_mult": 1.0})})


def count_flops(model: nn.Module, img_size: int = 224) -> dict[str, float]:
    """GFLOPs of one image, two ways. `gflops`: multiply-adds of conv and linear layers only, the convention of the
    paper (and pycls); `gflops_fvcore`: fvcore's default total, which also counts norms and pooling."""
    model = model.eval()
    first = next(model.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=first.device, dtype=first.dtype)
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    return {"gflops": (by_op.get("conv", 0) + by_op.get("linear", 0) + by_op.get("matmul", 0)) / 1e9,
            "gflops_fvcore": analysis.total() / 1e9}


def complexity(cfg: Config, num_classes: int = 1000, img_size: int = 224, paper: bool = True) -> dict[str, float]:
    """FLOPs and parameters of a config's network: at the paper's scale (224², 1000 classes, no width or depth
    multiplier) by default, or as trained (`paper=False`: the config's own scale). Counted once per network and
    kept in the cache folder, keyed by the architecture and the code that builds it."""
    arch = paper_scale(cfg) if paper else cfg
    sections = {k: v for k, v in arch.model_dump().items() if k not in ("train", "data")}
    return dict(_complexity(json.dumps(sections, sort_keys=True), num_classes, img_size))


@functools.cache
def _complexity(arch_json: str, num_classes: int, img_size: int) -> tuple:
    key = hashlib.sha1(f"{arch_json}|{num_classes}|{img_size}|{_code_version()}".encode()).hexdigest()
    path = cache_dir() / "complexity" / f"{key}.json"
    try:
        return tuple(json.loads(path.read_text()).items())
    except (OSError, ValueError):
        pass
    from .model import build_model

    model = build_model(parse(json.loads(arch_json)), num_classes)
    counted = {**count_flops(model, img_size), "params": count_params(model)}
    try:
        atomic_write(path, lambda f: f.write(json.dumps(counted).encode()))
    except OSError:
        pass  # a read-only cache only costs the count next time
    return tuple(counted.items())


@functools.cache
def _code_version() -> str:
    """A digest of the model code and of timm's and fvcore's versions: a count is reused only for the same code."""
    from importlib.metadata import version

    from . import model

    digest = hashlib.sha1(f"{version('timm')}|{version('fvcore')}".encode())
    for path in sorted(Path(model.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: the profiler's C++ side prints start/stop lines that no flag turns off."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@dataclass
class Speed:
    infer_img_s: float
    train_img_s: float
    peak_mem_mb: float | None


class Timer:
    """Throughput of one model, one round at a time, so that several models can be measured in alternation."""

    def __init__(self, model: nn.Module, batch_size: int, img_size: int, device: str, num_classes: int = 1000,
                 amp: bool = False):
        self.device = torch.device(device)
        self.cuda, self.amp = self.device.type == "cuda", amp
        fmt = torch.channels_last  # as the recipes train, on any device
        self.model = model.to(self.device, memory_format=fmt)
        self.x = torch.randn(batch_size, 3, img_size, img_size, device=self.device).to(memory_format=fmt)
        self.y = torch.randint(0, num_classes, (batch_size,), device=self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-6)
        self.infer_s: list[float] = []
        self.train_s: list[float] = []

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _train_step(self) -> None:
        with self._autocast():
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def round(self, iters: int = 1) -> None:
        self.model.eval()
        self._sync()
        start = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            for _ in range(iters):
                self.model(self.x)
        self._sync()
        self.infer_s.append((time.perf_counter() - start) / iters)
        self.model.train()
        start = time.perf_counter()
        for _ in range(iters):
            self._train_step()
        self._sync()
        self.train_s.append((time.perf_counter() - start) / iters)

    def peak_memory_mb(self) -> float | None:
        """Peak memory of one training step: the CUDA allocator's high-water mark, or on the CPU the high-water
        mark of the allocations the profiler records."""
        self.model.train()
        self._train_step()  # warm: the autotuner's first step of a shape allocates workspaces no later step needs
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._train_step()
            self._sync()
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self._train_step()
        events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
        level = peak = 0
        for e in events:
            level += e.self_cpu_memory_usage
            peak = max(peak, level)
        return peak / 2**20

    def release(self) -> None:
        """The model back on the CPU and this timer's tensors freed, so that the next model is measured alone."""
        self.model.to("cpu")
        del self.x, self.y, self.opt
        if self.cuda:
            torch.cuda.empty_cache()

    def result(self, peak_mem_mb: float | None = None) -> Speed:
        n = self.x.shape[0]
        # the first round warms up (allocator, kernel selection); the median of the rest is the figure
        infer = statistics.median(self.infer_s[1:] or self.infer_s)
        train = statistics.median(self.train_s[1:] or self.train_s)
        return Speed(n / infer, n / train, peak_mem_mb)


def measure_speed(models: dict[str, nn.Module], *, batch_size: int, img_size: int, device: str,
                  rounds: int = 5, num_classes: int = 1000, peak_memory: bool = True,
                  amp: bool = False, train_cfg=None) -> dict[str, Speed]:
    """Measure several models side by side, with cuDNN's autotuner and TF32 as a run sets them (`train_cfg`'s, by
    default the ones `config.Train` declares): each one's peak memory alone on the device first, then rounds
    alternating between them, in a rotating order, so that the machine's drift and noise fall on all of them alike."""
    from types import SimpleNamespace

    from .config import Train
    from .device import configure_backends

    declared = SimpleNamespace(**{k: Train.model_fields[k].default for k in ("cudnn_benchmark", "tf32")})
    configure_backends(train_cfg or declared, torch.device(device))
    torch.set_flush_denormal(True)  # untrained networks drift into denormals, which would time the FPU, not the net
    peaks = {name: None for name in models}
    for name, m in models.items() if peak_memory else ():  # the others' weights not counted in its peak
        alone = Timer(m, batch_size, img_size, device, num_classes, amp)
        peaks[name] = alone.peak_memory_mb()
        alone.release()
    timers = {name: Timer(m, batch_size, img_size, device, num_classes, amp) for name, m in models.items()}
    names = list(timers)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timers[name].round()
    return {name: t.result(peaks[name]) for name, t in timers.items()}


def bench(variants, ends: dict[str, str], *, batch_size: int, img_size: int, device: str, rounds: int,
          amp: bool = False, progress=None) -> list[dict]:
    """Throughput and peak memory of each variant's network; beside a path's end, timm's model with the same
    weights, measured in alternation with ours, and the ratio of the two."""
    import timm

    from .model import build_model, load_timm_state_dict

    rows = []
    for v in variants:
        models = {v.name: build_model(v.cfg)}
        twin = ends.get(v.name)
        if twin:
            # its stochastic depth too, so that both do the same work in training
            reference = timm.create_model(twin, pretrained=False, drop_path_rate=v.cfg.block.drop_path)
            load_timm_state_dict(models[v.name], reference.state_dict())  # the same numbers on both sides
            models[f"timm:{twin}"] = reference
        speeds = measure_speed(models, batch_size=batch_size, img_size=img_size, device=device, rounds=rounds,
                               amp=amp, train_cfg=v.cfg.train)
        ours = speeds[v.name]
        row = {"step": v.name, "infer_img_s": round(ours.infer_img_s, 1), "train_img_s": round(ours.train_img_s, 1),
               "peak_mem_mb": round(ours.peak_mem_mb) if ours.peak_mem_mb is not None else None,
               "timm_model": twin, "ratio_vs_timm_infer": None, "ratio_vs_timm_train": None}
        if twin:
            theirs = speeds[f"timm:{twin}"]
            row.update(ratio_vs_timm_infer=round(ours.infer_img_s / theirs.infer_img_s, 3),
                       ratio_vs_timm_train=round(ours.train_img_s / theirs.train_img_s, 3))
        rows.append(row)
        if progress:
            progress(v.name)
    return rows
