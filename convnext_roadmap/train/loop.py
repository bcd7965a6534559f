"""The training loop of one run: a `Trainer` assembled from its config with timm's pieces, one epoch of training,
evaluation; how it was launched and where its files go are the job's (`train/runner.py`)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
import torch.nn as nn

from ..config import Config
from ..device import autocast_dtype, configure_backends
from ..errors import RoadmapError
from .schedule import build_schedule

SYNC_EVERY = 50  # batches between the loss's checks on a GPU (each waits for the device)


def build_optimizer(model: nn.Module, t, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer of `train.opt` at `lr`, no weight decay on norms and biases unless asked; torch's fused
    update where the optimizer has one."""
    from timm.optim import create_optimizer_v2, get_optimizer_info

    info = get_optimizer_info(t.opt)
    extra = {"betas": tuple(t.betas)} if info.has_betas else {}
    if info.opt_class in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD):
        extra["fused"] = True  # torch's one-kernel update (equal up to rounding): ~1.1× the CPU proxy's training
    return create_optimizer_v2(model, opt=t.opt, lr=lr, weight_decay=t.weight_decay, momentum=t.momentum,
                               filter_bias_and_bn=t.filter_bias_and_bn, **extra)


def build_criterion(t, num_classes: int):
    """(mixup/cutmix or None, the loss): soft-target cross-entropy under mixup, else label smoothing or plain."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if t.mixup > 0 or t.cutmix > 0:
        return (Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing,
                      num_classes=num_classes), SoftTargetCrossEntropy())
    if t.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(t.label_smoothing)
    return None, nn.CrossEntropyLoss()


class Trainer:
    """The pieces of one run, built from its config with timm: loaders and transforms, the optimizer, the
    schedule per optimizer step, gradient accumulation, mixup/cutmix with label smoothing, EMA, bf16 autocast and
    channels_last."""

    def __init__(self, cfg: Config, seed: int, device: torch.device, rank: int = 0, world: int = 1,
                 skipped=None):
        from timm.utils import ModelEmaV3

        from ..data import make_loaders
        from ..model import build_model, input_size_note
        from ..model.pretrained import load_initial_weights

        t, self.cfg, self.device, self.rank, self.world = cfg.train, cfg, device, rank, world
        self.cuda = device.type == "cuda"
        configure_backends(t, device)
        if self.cuda:  # a local worker trains run after run: each run's progress lines show its own peak
            torch.cuda.reset_peak_memory_stats(device)
        self.train_loader, self.val_loader, self.classes = make_loaders(
            cfg.data, t.batch_size, t.batch_size * 2, seed, (rank, world), device=device, skipped=skipped)
        self.model = build_model(cfg, len(self.classes))
        self.notes = load_initial_weights(self.model, cfg) if t.pretrained else []
        self.notes += [note] if (note := input_size_note(cfg)) else []
        self.amp, amp_note = autocast_dtype(t.amp, device)
        self.notes += [amp_note] if amp_note else []  # the job says them
        self.model = self.model.to(device)
        if t.channels_last:  # NHWC: faster on GPUs and, for these networks, on the CPU too
            self.model = self.model.to(memory_format=torch.channels_last)
        self.accum = t.accumulation(world)
        self.effective_batch = t.batch_size * world * self.accum
        self.lr = t.lr * self.effective_batch / t.base_batch_size
        self.optimizer = build_optimizer(self.model, t, self.lr)
        micro = len(self.train_loader)
        self.steps_per_epoch = math.ceil(micro / self.accum)  # optimizer steps; the last may gather fewer
        if micro == 0:
            raise RoadmapError(f"train.batch_size: {t.batch_size} × {world} is more than the "
                               f"{len(self.train_loader.sampler) * world} training images")
        self.scheduler = build_schedule(self.optimizer, t, self.steps_per_epoch)
        self.mixup, self.criterion = build_criterion(t, len(self.classes))
        self.autocast_dtype = self.amp  # what the forward pass ran in, as seen
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None
        # what evaluation calls: the model as it trains, compiled where it trains compiled; what a training step
        # calls: that, wrapped by DDP
        self.compiled = torch.compile(self.model) if t.compile else self.model
        self.wrapped = self.compiled
        if world > 1:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.compiled, device_ids=[device.index] if self.cuda else None)
        # after the wrap, which gave every rank rank 0's weights: one EMA per run, the same on every rank (timm and
        # the official code copy each rank's own initial weights, and evaluate a mix of them over the shards)
        self.ema = ModelEmaV3(self.model, decay=t.ema_decay) if t.ema else None
        self.ema_compiled = (torch.compile(self.ema.module) if t.compile else self.ema.module) if t.ema else None

    def close(self) -> None:
        """End the loaders' worker processes now, whatever ends the run, not at the interpreter's exit: there
        Python's multiprocessing waits for each worker after a SIGTERM, which they ignore (`data.pil`)."""
        for loader in (self.train_loader, self.val_loader):
            loader = getattr(loader, "loader", loader)  # inside DeviceBatches
            iterator = getattr(loader, "_iterator", None)  # a DataLoader's persistent workers
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def autocast(self):
        # the same autocast on any device, so that the CPU tests run the code a GPU runs
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()

    def _to_device(self, x, y):
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_epoch(self, epoch: int, progress, on_step=None, say=None, place: dict | None = None, breaks=None,
                    pause=None) -> dict[str, float]:
        """One pass over the training split: its mean loss, and its images per second (all processes, data
        loading included) as the table's throughput. Every `accum` micro-batches make one optimizer step; DDP
        all-reduces the gradients only on the last of them. Every `train.log_every` batches, `say` gets a progress
        line; the host waits for the device only then and every SYNC_EVERY batches (the loss's check).

        At each optimizer step's end but the epoch's last, `breaks` (`interrupt.Breaks`) may ask for the run's place
        (this rank's: `pause(place, stop)`, which saves it and may end the run); `place`, such a place, resumes the
        epoch there: its next batch, the loader's streams, the loss summed so far. A stop asked between the
        micro-batches of one step waits for the step's end."""
        from .interrupt import GO_ON, STOP

        self.model.train()
        self.train_loader.set_epoch(epoch, place["loader"] if place else None)
        if place:
            self._load_buffers(place["buffers"])
        micro = len(self.train_loader)
        first = place["batch"] if place else 0
        total = torch.tensor(place["total"] if place else 0.0, device=self.device)  # float32, as it was summed
        count, start = (place["count"] if place else 0), time.perf_counter()
        before_s, waited = (place["train_s"], place["data_s"]) if place else (0.0, 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        tick, paused = start, 0.0
        window = _Window(start, self.cuda, self.device, count * self.world, waited)
        if first and not progress.disable:
            progress.update(first)
        for i, (x, y) in enumerate(self.train_loader, first):
            waited += time.perf_counter() - tick  # loading and augmenting, not overlapped with training
            x, y = self._to_device(x, y)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            group = min(self.accum, micro - (i // self.accum) * self.accum)  # micro-batches in this step
            last = (i + 1) % self.accum == 0 or i + 1 == micro
            with nullcontext() if last or self.world == 1 else self.wrapped.no_sync():
                with self.autocast():
                    logits = self.wrapped(x)
                    loss = self.criterion(logits, y)
                if self.world == 1 and (not self.cuda or (i + 1) % SYNC_EVERY == 0) and not torch.isfinite(loss):
                    raise RuntimeError(f"the loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}")
                scaled = loss / group
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if self.amp:
                self.autocast_dtype = logits.dtype
            if last:
                self._step()
                step = epoch * self.steps_per_epoch + i // self.accum + 1
                self.scheduler.step_update(step)
                if self.ema is not None:
                    self.ema.update(self.model)
                if on_step is not None:
                    on_step(step, loss, self.optimizer.param_groups[0]["lr"])
            total += loss.detach() * len(x)
            count += len(x)
            lr = self.optimizer.param_groups[0]["lr"]
            if not progress.disable:
                progress.update(1)
                if (i + 1) % SYNC_EVERY == 0:  # a loss.item() every batch would wait for the GPU every batch
                    progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            tick = time.perf_counter()
            if say is not None and (i + 1) % self.cfg.train.log_every == 0:
                say(window.line(epoch, i + 1, micro, loss, lr, count * self.world, waited, tick))
            if last and breaks is not None and i + 1 < micro and (wish := breaks.at_step()) != GO_ON:
                pause({"batch": i + 1, "loader": self.train_loader.position, "total": total.item(), "count": count,
                       "train_s": before_s + tick - start - paused, "data_s": waited, "buffers": self._buffers(),
                       "device": self.device.type},
                      wish >= STOP)
                paused += time.perf_counter() - tick  # the save is neither training nor waiting for data
                tick = time.perf_counter()
        seconds = before_s + time.perf_counter() - start - paused
        mean = self._reduce(total, count)  # the same on every rank: they stop together
        if not math.isfinite(mean):
            raise RuntimeError(f"the loss is {mean} in epoch {epoch + 1}")
        return {"train_loss": mean, "train_img_s": count * self.world / seconds, "train_s": seconds,
                "data_s": waited}

    def _buffers(self) -> dict:
        """This rank's batch-norm statistics, of the model and its EMA: under DDP each rank's are its own images'
        until evaluation takes their mean, so a checkpoint in an epoch's middle keeps every rank's."""
        models = {"model": self.model, "ema": self.ema.module if self.ema is not None else None}
        return {name: {k: v.detach().cpu().clone() for k, v in m.named_buffers()}
                for name, m in models.items() if m is not None}

    def _load_buffers(self, saved: dict) -> None:
        models = {"model": self.model, "ema": self.ema.module if self.ema is not None else None}
        for name, buffers in saved.items():
            mine = dict(models[name].named_buffers())
            for key, value in buffers.items():
                mine[key].copy_(value)

    def _step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # so that the clipping sees the true gradients
        if self.cfg.train.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped where a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from timm.utils import accuracy, distribute_bn

        if self.world > 1:  # the model or its EMA: each rank's batch-norm statistics are its own images'
            distribute_bn(model, self.world, reduce=True)  # their mean, as timm's --dist-bn reduce
        model.eval()
        sums = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss, top-1, top-5, count
        for x, y in self.val_loader:
            x, y = self._to_device(x, y)
            with self.autocast():
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            top1, top5 = accuracy(logits, y, topk=(1, min(5, len(self.classes))))
            sums[:3] += torch.stack([loss.double(), top1.double() * len(x) / 100, top5.double() * len(x) / 100])
            sums[3] += len(x)
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


class _Window:
    """The progress line's figures since the line before: images per second, the share spent waiting for data."""

    def __init__(self, start: float, cuda: bool, device: torch.device, images: int = 0, waited: float = 0.0):
        self.time, self.images, self.waited, self.cuda, self.device = start, images, waited, cuda, device

    def line(self, epoch: int, batch: int, batches: int, loss, lr: float, images: int, waited: float,
             now: float) -> str:
        seconds = max(now - self.time, 1e-9)
        rate, wait = (images - self.images) / seconds, (waited - self.waited) / seconds
        self.time, self.images, self.waited = now, images, waited
        memory = f"  peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB" if self.cuda else ""
        return (f"      epoch {epoch + 1} batch {batch}/{batches}  loss {loss.item():.3f}  lr {lr:.2e}  "
                f"{rate:,.0f} img/s  data wait {100 * wait:.0f}%{memory}")


def progress_bar(total: int, desc: str):
    """A progress bar on a terminal; disabled (and never asked for a loss) without one."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())
