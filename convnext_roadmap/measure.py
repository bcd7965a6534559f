"""Complexity and speed: FLOPs (fvcore), parameters, throughput and peak memory."""

from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis

from .config import Config


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_scale(cfg: Config) -> Config:
    """The same network at the paper's scale: width and depth multipliers back to 1, a timm model at its own
    input size."""
    if cfg.timm is not None:
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


def complexity(cfg: Config, num_classes: int = 1000, img_size: int = 224) -> dict[str, float]:
    """FLOPs and parameters of a config's network at the paper's scale (224², 1000 classes by default)."""
    from .model import build_model

    model = build_model(paper_scale(cfg), num_classes)
    return {**count_flops(model, img_size), "params": count_params(model)}


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

    def __init__(self, model: nn.Module, batch_size: int, img_size: int, device: str, num_classes: int = 1000):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt)
        self.x = torch.randn(batch_size, 3, img_size, img_size, device=self.device).to(memory_format=fmt)
        self.y = torch.randint(0, num_classes, (batch_size,), device=self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-6)
        self.infer_s: list[float] = []
        self.train_s: list[float] = []

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

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

    def result(self, peak_memory: bool = True) -> Speed:
        n = self.x.shape[0]
        # the first round warms up (allocator, kernel selection); the median of the rest is the figure
        infer = statistics.median(self.infer_s[1:] or self.infer_s)
        train = statistics.median(self.train_s[1:] or self.train_s)
        return Speed(n / infer, n / train, self.peak_memory_mb() if peak_memory else None)


def measure_speed(models: dict[str, nn.Module], *, batch_size: int, img_size: int, device: str,
                  rounds: int = 5, num_classes: int = 1000, peak_memory: bool = True) -> dict[str, Speed]:
    """Measure several models side by side: rounds alternate between them, in a rotating order, so that the
    machine's drift and noise fall on all of them alike."""
    torch.set_flush_denormal(True)  # untrained networks drift into denormals, which would time the FPU, not the net
    timers = {name: Timer(m, batch_size, img_size, device, num_classes) for name, m in models.items()}
    names = list(timers)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timers[name].round()
    return {name: t.result(peak_memory) for name, t in timers.items()}
