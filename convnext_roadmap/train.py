"""One (config, seed) to completion: the training loop with timm's pieces, evaluation, checkpoint and resume.

`run_job` is the job function: the same call runs in-process, under submitit on this machine, or on a SLURM node;
it never knows how it was launched.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import results
from .config import Config
from .errors import RoadmapError
from .loading import to_yaml


@dataclass
class Job:
    """Everything a run needs, picklable: where it writes, what it trains, with which seed, on what."""

    run_dir: str
    name: str
    cfg: dict  # a resolved Config, as plain data
    seed: int = 0
    device: str = "auto"
    stop_after: int | None = None  # end this call after that many epochs, leaving a checkpoint (time budgets)
    meta: dict = field(default_factory=dict)  # recorded in the summary: step label, base, experiment
    measures: dict = field(default_factory=dict)  # FLOPs and params as the plan counted them, for the summary


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RoadmapError(f"--device {device}: no CUDA device is available here")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """The pieces of one run, built from its config with timm: loaders and transforms, optimizer (AdamW, no weight
    decay on norms and biases), cosine schedule with linear warm-up per step, mixup/cutmix with label smoothing,
    EMA, bf16 autocast and channels_last on CUDA."""

    def __init__(self, cfg: Config, seed: int, device: torch.device, rank: int = 0, world: int = 1):
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler
        from timm.utils import ModelEmaV3

        from .data import make_loaders
        from .model import build_model
        from .model.pretrained import load_initial_weights
        from .model.network import adapts_input_size

        t, self.cfg, self.device, self.rank, self.world = cfg.train, cfg, device, rank, world
        self.cuda = device.type == "cuda"
        self.train_loader, self.val_loader, self.classes = make_loaders(
            cfg.data, t.batch_size, t.batch_size * 2, seed, (rank, world))
        self.model = build_model(cfg, len(self.classes))
        self.notes = load_initial_weights(self.model, cfg) if t.pretrained else []
        if cfg.timm is not None and adapts_input_size(cfg):
            self.notes.append(f"timm adapted {cfg.timm.name} to {cfg.timm.img_size}×{cfg.timm.img_size} input")
        for note in self.notes:
            _say(rank, f"  {note}")
        self.model = self.model.to(device)
        if self.cuda and t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.effective_batch = t.batch_size * world
        self.lr = t.lr * self.effective_batch / t.base_batch_size
        self.optimizer = create_optimizer_v2(self.model, opt=t.opt, lr=self.lr, weight_decay=t.weight_decay,
                                             betas=tuple(t.betas))
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise RoadmapError(f"train.batch_size: {t.batch_size} × {world} is more than the "
                               f"{len(self.train_loader.dataset)} training images")
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=t.epochs * self.steps_per_epoch, lr_min=t.min_lr,
            warmup_t=t.warmup_epochs * self.steps_per_epoch, warmup_lr_init=t.warmup_lr, t_in_epochs=False)
        self.mixup = None
        if t.mixup > 0 or t.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                               num_classes=len(self.classes))
            self.criterion = SoftTargetCrossEntropy()
        elif t.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(t.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.ema = ModelEmaV3(self.model, decay=t.ema_decay) if t.ema else None
        self.forward = torch.compile(self.model) if t.compile else self.model
        if world > 1:
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[device.index] if self.cuda else None)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda and self.cfg.train.amp else nullcontext()

    def _to_device(self, x, y):
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.cuda and self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_epoch(self, epoch: int, progress) -> dict[str, float]:
        """One pass over the training split: its mean loss, and its images per second (all processes, data
        loading included) as the table's throughput."""
        self.model.train()
        self.train_loader.sampler.set_epoch(epoch)
        total, count, start = torch.zeros((), device=self.device), 0, time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            x, y = self._to_device(x, y)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            with self.autocast():
                loss = self.criterion(self.forward(x), y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.train.clip_grad is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
            self.optimizer.step()
            self.scheduler.step_update(epoch * self.steps_per_epoch + i + 1)
            if self.ema is not None:
                self.ema.update(self.model)
            total += loss.detach() * len(x)
            count += len(x)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        seconds = time.perf_counter() - start
        return {"train_loss": self._reduce(total, count), "train_img_s": count * self.world / seconds}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from timm.utils import accuracy

        model.eval()
        sums = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss, top-1, top-5, count
        for x, y in self.val_loader:
            x, y = self._to_device(x, y)
            with self.autocast():
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            top1, top5 = accuracy(logits, y, topk=(1, min(5, len(self.classes))))
            sums += torch.tensor([loss.item(), top1.item() * len(x) / 100, top5.item() * len(x) / 100, len(x)],
                                 device=self.device, dtype=torch.float64)
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        loss, top1, top5, n = sums.tolist()
        return {"val_loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}

    def _reduce(self, total: torch.Tensor, count: int) -> float:
        if self.world > 1:
            both = torch.stack([total.double(), torch.tensor(float(count), device=self.device, dtype=torch.float64)])
            torch.distributed.all_reduce(both)
            return (both[0] / both[1]).item()
        return (total / max(count, 1)).item()

    def state(self, epoch: int, history: list[dict], best: float) -> dict:
        return {"epoch": epoch, "history": history, "best_top1": best, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "rng": _rng_state()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())


def run_job(job: Job) -> dict:
    """Train one (config, seed) to completion, resuming from its checkpoint; return its summary. A finished run
    is not trained again. A run that fails leaves a summary with status "failed" and the error, then raises."""
    out = Path(job.run_dir)
    if results.is_done(out):
        return results.read_json(out / "summary.json")
    rank, world = _distributed()
    try:
        return _train(job, out, rank, world)
    except Exception as e:
        if rank == 0:
            results.write_json(out / "summary.json", {
                "status": "failed", "name": job.name, "seed": job.seed,
                "error": f"{type(e).__name__}: {e}".splitlines()[0], **job.meta})
        raise


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _train(job: Job, out: Path, rank: int, world: int) -> dict:
    cfg = Config.model_validate(job.cfg)
    if cfg.train is None or cfg.data is None:
        raise RoadmapError(f"{job.name}: the config has no recipe (train and data sections)")
    device = pick_device(job.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    t = cfg.train
    seed_everything(job.seed + rank)
    if rank == 0:
        results.write_text(out / "config.yaml", to_yaml(cfg))
    trainer = Trainer(cfg, job.seed, device, rank, world)
    history, best, start = [], -1.0, 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        trainer.load_state(state)
        history, best, start = state["history"], state["best_top1"], state["epoch"] + 1
        _say(rank, f"  resuming {job.name} seed{job.seed} after epoch {start}/{t.epochs}")
    elif rank == 0 and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # lines of a run that never reached its first checkpoint
    if rank == 0 and start == 0:
        _say(rank, f"  {job.name} seed{job.seed}: batch {t.batch_size} × {world} process(es) = {trainer.effective_batch}"
                   f", lr {t.lr:g} × {trainer.effective_batch}/{t.base_batch_size} = {trainer.lr:.3g} "
                   f"(linear scaling), {len(trainer.classes)} classes, {device}")
    started = time.time()
    for epoch in range(start, t.epochs):
        tick = time.time()
        with _progress(trainer.steps_per_epoch, f"{job.name} s{job.seed} {epoch + 1}/{t.epochs}") as bar:
            trained = trainer.train_epoch(epoch, bar)
        metrics = {"epoch": epoch + 1, **trained, **trainer.evaluate(trainer.model),
                   "lr": trainer.optimizer.param_groups[0]["lr"], "epoch_s": time.time() - tick}
        if trainer.ema is not None:
            metrics.update({f"ema_{k}": v for k, v in trainer.evaluate(trainer.ema.module).items()})
        history.append(metrics)
        if rank == 0:
            if metrics["top1"] > best:
                best = metrics["top1"]
                results.atomic_write(out / "best.pt", lambda f: torch.save(
                    {"model": trainer.model.state_dict(), "epoch": epoch + 1, "classes": trainer.classes}, f))
            # the checkpoint first: metrics.jsonl is rewritten from its history, so a crash between the two
            # files never leaves a line that a resumed run would write again
            state = trainer.state(epoch, history, best)
            results.atomic_write(checkpoint, lambda f: torch.save(state, f))
            results.write_text(out / "metrics.jsonl", "".join(_json_line(m) for m in history))
        _say(rank, f"    epoch {epoch + 1}/{t.epochs}  loss {trained['train_loss']:.3f}  top-1 {metrics['top1']:.1f}%  "
                   f"top-5 {metrics['top5']:.1f}%  ({metrics['epoch_s']:.0f} s)")
        if job.stop_after is not None and epoch + 1 - start >= job.stop_after and epoch + 1 < t.epochs:
            return {"status": "interrupted", "epoch": epoch + 1}
    summary = _summary(job, cfg, trainer, history, best, time.time() - started, world)
    if rank == 0:
        results.write_json(out / "summary.json", summary)
    return summary


def _json_line(metrics: dict) -> str:
    return json.dumps(metrics) + "\n"


def _say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)


def _summary(job: Job, cfg: Config, trainer: Trainer, history: list[dict], best: float, wall: float,
             world: int) -> dict:
    last = history[-1]
    speeds = [m["train_img_s"] for m in history[1:] or history]  # the first epoch warms up
    return {
        "status": "completed", "name": job.name, "seed": job.seed, **job.meta, **job.measures,
        "final_top1": last["top1"], "final_top5": last["top5"], "best_top1": best,
        "final_ema_top1": last.get("ema_top1"), "epochs": len(history),
        "train_img_s": sorted(speeds)[len(speeds) // 2], "img_size": cfg.data.img_size,
        "effective_batch": trainer.effective_batch, "lr": trainer.lr,
        "lr_rule": f"{cfg.train.lr:g} × {trainer.effective_batch} / {cfg.train.base_batch_size} (linear)",
        "processes": world, "pretrained": cfg.train.pretrained, "notes": trainer.notes, "wall_s": wall,
        "hardware": _hardware(trainer.device), "git_commit": _git_commit(), "versions": _versions(),
        "classes": trainer.classes,
    }


def _hardware(device: torch.device) -> dict:
    hw = {"device": str(device), "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "host": platform.node()}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import timm

    from . import __name__ as pkg
    from importlib.metadata import PackageNotFoundError, version

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            pkg: v("convnext-roadmap"), "fvcore": v("fvcore")}

