"""One (config, seed) to completion: the training loop with timm's pieces, evaluation, checkpoint and resume.

`run_job` is the job function: the same call runs in-process, under submitit on this machine, or on a SLURM node;
it never knows how it was launched.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from . import results, rng
from .config import Config
from .errors import RoadmapError
from .job import Job
from .loading import to_yaml


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


class Trainer:
    """The pieces of one run, built from its config with timm: loaders and transforms, the optimizer (no weight
    decay on norms and biases unless asked), a cosine or step schedule with linear warm-up per optimizer step,
    gradient accumulation, mixup/cutmix with label smoothing, EMA, bf16 autocast and channels_last."""

    def __init__(self, cfg: Config, seed: int, device: torch.device, rank: int = 0, world: int = 1,
                 skipped=None):
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2, get_optimizer_info
        from timm.scheduler import CosineLRScheduler, StepLRScheduler
        from timm.utils import ModelEmaV3

        from .data import make_loaders
        from .model import build_model
        from .model.pretrained import load_initial_weights
        from .model.network import adapts_input_size

        t, self.cfg, self.device, self.rank, self.world = cfg.train, cfg, device, rank, world
        self.cuda = device.type == "cuda"
        self.train_loader, self.val_loader, self.classes = make_loaders(
            cfg.data, t.batch_size, t.batch_size * 2, seed, (rank, world), prefetch=self.cuda, skipped=skipped)
        self.model = build_model(cfg, len(self.classes))
        self.notes = load_initial_weights(self.model, cfg) if t.pretrained else []
        if cfg.timm is not None and adapts_input_size(cfg):
            self.notes.append(f"timm adapted {cfg.timm.name} to {cfg.timm.img_size}×{cfg.timm.img_size} input")
        self.amp, amp_note = use_amp(t.amp, device)
        self.notes += [amp_note] if amp_note else []
        for note in self.notes:
            _say(rank, f"  {note}")
        self.model = self.model.to(device)
        if t.channels_last:  # NHWC: faster on GPUs and, for these networks, on the CPU too
            self.model = self.model.to(memory_format=torch.channels_last)
        self.accum = t.accumulation(world)
        self.effective_batch = t.batch_size * world * self.accum
        self.lr = t.lr * self.effective_batch / t.base_batch_size
        info = get_optimizer_info(t.opt)
        extra = {"betas": tuple(t.betas)} if info.has_betas else {}
        if info.opt_class in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD):
            extra["fused"] = True  # torch's one-kernel update (equal up to rounding): ~1.1× the CPU proxy's training
        self.optimizer = create_optimizer_v2(self.model, opt=t.opt, lr=self.lr, weight_decay=t.weight_decay,
                                             momentum=t.momentum, filter_bias_and_bn=t.filter_bias_and_bn, **extra)
        micro = len(self.train_loader)
        self.steps_per_epoch = math.ceil(micro / self.accum)  # optimizer steps; the last may gather fewer
        if micro == 0:
            raise RoadmapError(f"train.batch_size: {t.batch_size} × {world} is more than the "
                               f"{len(self.train_loader.sampler) * world} training images")
        warmup = dict(warmup_t=t.warmup_epochs * self.steps_per_epoch, warmup_lr_init=t.warmup_lr, t_in_epochs=False)
        if t.sched == "step":
            self.scheduler = StepLRScheduler(self.optimizer, decay_t=t.decay_epochs * self.steps_per_epoch,
                                             decay_rate=t.decay_rate, **warmup)
        else:
            self.scheduler = CosineLRScheduler(self.optimizer, t_initial=t.epochs * self.steps_per_epoch,
                                               lr_min=t.min_lr, **warmup)
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
        self.autocast_dtype = torch.bfloat16 if self.amp else None  # what the forward pass ran in, as seen
        self.forward = torch.compile(self.model) if t.compile else self.model
        if world > 1:
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[device.index] if self.cuda else None)

    def autocast(self):
        # the same bf16 autocast on any device, so that the CPU tests run the code a GPU runs
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def _to_device(self, x, y):
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_epoch(self, epoch: int, progress, on_step=None) -> dict[str, float]:
        """One pass over the training split: its mean loss, and its images per second (all processes, data
        loading included) as the table's throughput. Every `accum` micro-batches make one optimizer step; DDP
        all-reduces the gradients only on the last of them."""
        self.model.train()
        self.train_loader.set_epoch(epoch)
        micro = len(self.train_loader)
        total, count, start = torch.zeros((), device=self.device), 0, time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        waited, tick = 0.0, start
        for i, (x, y) in enumerate(self.train_loader):
            waited += time.perf_counter() - tick  # loading and augmenting, not overlapped with training
            x, y = self._to_device(x, y)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            group = min(self.accum, micro - (i // self.accum) * self.accum)  # micro-batches in this step
            last = (i + 1) % self.accum == 0 or i + 1 == micro
            with nullcontext() if last or self.world == 1 else self.forward.no_sync():
                with self.autocast():
                    logits = self.forward(x)
                    loss = self.criterion(logits, y)
                if self.world == 1 and (not self.cuda or (i + 1) % 50 == 0) and not torch.isfinite(loss):
                    raise RuntimeError(f"the loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}")
                (loss / group).backward()
            if self.amp:
                self.autocast_dtype = logits.dtype
            if last:
                if self.cfg.train.clip_grad is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                step = epoch * self.steps_per_epoch + i // self.accum + 1
                self.scheduler.step_update(step)
                if self.ema is not None:
                    self.ema.update(self.model)
                if on_step is not None:
                    on_step(step, loss, self.optimizer.param_groups[0]["lr"])
            total += loss.detach() * len(x)
            count += len(x)
            if not progress.disable:  # a loss.item() every step would wait for the GPU every step
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            tick = time.perf_counter()
        seconds = time.perf_counter() - start
        mean = self._reduce(total, count)  # the same on every rank: they stop together
        if not math.isfinite(mean):
            raise RuntimeError(f"the loss is {mean} in epoch {epoch + 1}")
        return {"train_loss": mean, "train_img_s": count * self.world / seconds, "train_s": seconds,
                "data_s": waited}

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
                "ema": self.ema.state_dict() if self.ema is not None else None, "rng": rng.get_state()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        rng.set_state(state["rng"])


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())


def run_job(job: Job) -> dict:
    """Train one (config, seed) to completion, resuming from its checkpoint; return its summary. A finished run
    is not trained again, and a run that another live process holds (run.lock) is left to it: "skipped". A run
    that fails leaves a summary with status "failed" and the root cause, error.txt with the traceback, and
    raises. Rank 0 decides for every rank whether to train."""
    out = Path(job.run_dir)
    rank, world = _distributed()
    lock = results.RunLock(out)
    decision, failure = [None], None
    if rank == 0:
        try:
            decision[0] = _claim(out, lock)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, or the others wait at the broadcast
            lock.release()  # if it was taken: a damaged summary read after the lock
            failure = e
            # the others get a copy that pickles whatever the original holds
            decision[0] = (RoadmapError(str(e)) if isinstance(e, RoadmapError)
                           else RuntimeError(f"{type(e).__name__}: {e}"))
    if world > 1:
        torch.distributed.broadcast_object_list(decision, src=0)
    if failure is not None:
        raise failure
    if isinstance(decision[0], Exception):
        raise decision[0]
    if decision[0] == "done":
        return results.read_json(out / "summary.json")
    if decision[0] is not None:
        _say(rank, f"= {job.name} seed{job.seed}: {results.describe_holder(decision[0])}")
        return {"status": "skipped", "holder": decision[0]}
    try:
        return _train(job, out, rank, world)
    except Exception as e:
        results.write_text(out / ("error.txt" if rank == 0 else f"error.rank{rank}.txt"), traceback.format_exc())
        if rank == 0:
            results.write_failure(out, job.name, job.seed, root_cause(e), job.meta)
        raise
    finally:
        if rank == 0:
            lock.release()


def _claim(out: Path, lock: results.RunLock):
    """None when this process now owns the run; "done" when it is finished (looked at again once the lock is
    ours: another process may have finished it meanwhile); else the live holder."""
    if results.is_done(out):
        return "done"
    holder = lock.acquire()
    if holder is None and results.is_done(out):
        lock.release()
        return "done"
    if holder is None:  # a failed attempt's summary and traceback would speak for this one while it trains
        for stale in (out / "summary.json", out / "error.txt", *out.glob("error.rank*.txt")):
            stale.unlink(missing_ok=True)
        # nothing to resume: the epochs and the images left out by an attempt that never reached its first
        # checkpoint (another config's, maybe other data) are not this run's
        if not (out / "checkpoint.pt").exists():
            for stale in (out / "metrics.jsonl", out / "skipped.txt"):
                stale.unlink(missing_ok=True)
    return holder


def root_cause(e: BaseException) -> str:
    """The original error in one line: the innermost explicitly chained exception, its type and the first line of
    its message; for a DataLoader worker's wrapper ("Caught ValueError in DataLoader worker process 1 …
    Original Traceback …"), the traceback's last line, where it keeps the error it caught."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "Original Traceback" in str(e):  # a worker's wrapped traceback: its last line is the original's
        return lines[-1]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


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
    rng.seed_all(job.seed + rank)
    if rank == 0:
        results.write_text(out / "config.yaml", to_yaml(cfg))
    from .data import SkipRecord

    skipped = SkipRecord(out / "skipped.txt")
    trainer = Trainer(cfg, job.seed, device, rank, world, skipped)
    history, best, start = [], -1.0, 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        trainer.load_state(state)
        history, best, start = state["history"], state["best_top1"], state["epoch"] + 1
        _say(rank, f"  resuming {job.name} seed{job.seed} after epoch {start}/{t.epochs}")
    if rank == 0 and start == 0:
        _say(rank, f"  {job.name} seed{job.seed}: batch {t.batch_size} × {world} process(es) × {trainer.accum} "
                   f"accumulation step(s) = {trainer.effective_batch}"
                   f", lr {t.lr:g} × {trainer.effective_batch}/{t.base_batch_size} = {trainer.lr:.3g} "
                   f"(linear scaling), {len(trainer.classes)} classes, {device}")
    board = _TensorBoard(out, job.log_every) if job.tensorboard and rank == 0 else None
    started = time.time()
    try:
        for epoch in range(start, t.epochs):
            tick = time.time()
            with _progress(len(trainer.train_loader), f"{job.name} s{job.seed} {epoch + 1}/{t.epochs}") as bar:
                trained = trainer.train_epoch(epoch, bar, board.step if board else None)
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
            if board is not None:
                board.epoch(metrics)
            _say(rank, f"    epoch {epoch + 1}/{t.epochs}  loss {trained['train_loss']:.3f}  "
                       f"top-1 {metrics['top1']:.1f}%  top-5 {metrics['top5']:.1f}%  ({results.epoch_times(metrics)})")
            if job.stop_after is not None and epoch + 1 - start >= job.stop_after and epoch + 1 < t.epochs:
                return {"status": "interrupted", "epoch": epoch + 1}
    finally:
        if board is not None:
            board.writer.close()
    summary = _summary(job, cfg, trainer, history, best, time.time() - started, world, skipped.count())
    if rank == 0:
        results.write_json(out / "summary.json", summary)
    return summary


class _TensorBoard:
    """TensorBoard scalars in the run folder, so that `tensorboard --logdir results/EXP` shows each run and seed."""

    def __init__(self, folder: Path, every: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.every = SummaryWriter(log_dir=str(folder)), every

    def step(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if step % self.every == 0:
            self.writer.add_scalar("step/train_loss", loss.item(), step)
            self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{key}", value, metrics["epoch"])
        self.writer.flush()


def _json_line(metrics: dict) -> str:
    return json.dumps(metrics) + "\n"


def _say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)


def _summary(job: Job, cfg: Config, trainer: Trainer, history: list[dict], best: float, wall: float,
             world: int, skipped: int) -> dict:
    last = history[-1]
    later = history[1:] or history  # the first epoch warms up
    speeds = sorted(m["train_img_s"] for m in later)
    # how much longer an epoch takes than its training steps alone: the data path's cost (1.0: none)
    over = sorted(m["train_s"] / max(m["train_s"] - m["data_s"], 1e-9) for m in later if "data_s" in m)
    notes = [*trainer.notes, *([f"{skipped} image(s) left out: unreadable or could not be augmented (skipped.txt)"]
                               if skipped else [])]
    below = results.below_best([m["top1"] for m in history])
    return {
        "status": "completed", "name": job.name, "seed": job.seed, **job.meta, **job.measures,
        "final_top1": last["top1"], "final_top5": last["top5"], "best_top1": best,
        "final_ema_top1": last.get("ema_top1"), "epochs": len(history),
        "last_epochs_below_best": below, "levelled_off": None if below is None else below <= results.LEVEL_MARGIN,
        "train_img_s": speeds[len(speeds) // 2], "epoch_over_step": over[len(over) // 2] if over else None,
        "img_size": cfg.data.img_size,
        "effective_batch": trainer.effective_batch, "accum_steps": trainer.accum, "lr": trainer.lr,
        "lr_rule": f"{cfg.train.lr:g} × {trainer.effective_batch} / {cfg.train.base_batch_size} (linear)",
        "autocast": str(trainer.autocast_dtype).removeprefix("torch.") if trainer.autocast_dtype else None,
        "channels_last": _is_channels_last(trainer.model),
        "processes": world, "hosts": _hosts(world), "pretrained": cfg.train.pretrained, "notes": notes,
        "skipped_images": skipped,
        "wall_s": wall,
        "hardware": _hardware(trainer.device), "git_commit": _git_commit(), "versions": _versions(),
        "classes": trainer.classes,
    }


def _hosts(world: int) -> list[str]:
    """The hosts the job's processes ran on, in rank order (every rank takes part)."""
    if world == 1:
        return [platform.node()]
    hosts = [None] * world
    torch.distributed.all_gather_object(hosts, platform.node())
    return hosts


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the network's first 4-d weight is laid out NHWC (what `train.channels_last` asks)."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return bool(weight is not None and weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous())


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

