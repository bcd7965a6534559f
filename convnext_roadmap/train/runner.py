"""One (config, seed) to completion: claim the run folder, train it epoch by epoch with checkpoints, write its
summary, or leave the root cause of its failure. The same call runs in-process, on a local worker or on a SLURM
node; it never knows how it was launched."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import torch

from .. import results, rng
from ..config import parse
from ..device import train_device
from ..errors import RoadmapError
from ..job import Job
from ..loading import to_yaml
from . import provenance, state
from .interrupt import Breaks
from .loop import Trainer, progress_bar
from .trackers import Trackers


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
            decision[0] = claim(out, lock)
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
    peers = _Peers(job, rank) if world > 1 else None
    try:
        return _train(job, out, rank, world)
    except Exception as e:
        results.write_text(out / ("error.txt" if rank == 0 else f"error.rank{rank}.txt"), traceback.format_exc())
        # rank 0's collective fails at once when a failing peer's process ends: that peer's cause is the run's
        cause = (peers.peer_cause() if peers is not None else None) or root_cause(e)
        if rank == 0:
            results.write_failure(out, job.name, job.seed, cause, job.meta)
        if peers is not None:
            peers.fail(root_cause(e))
        raise
    finally:
        if peers is not None:
            peers.stop()
        if rank == 0:
            lock.release()


class _Peers:
    """Under DDP, a rank that fails must not leave the others waiting in a collective for it (NCCL's timeout: ten
    minutes): it says so in the process group's store, and a thread of every rank that hears it ends its process
    within WATCH_S, rank 0 writing the failing rank's cause as the run's. A store that no longer answers (rank 0's
    process, which holds it, is gone) ends them too."""

    KEY = "roadmap/failed"
    WATCH_S = 5.0

    def __init__(self, job: Job, rank: int):
        import threading

        self.job, self.rank = job, rank
        self.store = torch.distributed.distributed_c10d._get_default_store()
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="peers-watch").start()

    def fail(self, cause: str) -> None:
        self.stopped.set()  # first: this rank's own watch must not hear its own failure and cut its exit short
        try:
            if not self.store.check([self.KEY]):  # the first failure is the run's cause
                self.store.set(self.KEY, f"{self.rank}\t{cause}")
        except Exception:  # noqa: BLE001 - a store already gone: the others hear that instead
            pass

    def stop(self) -> None:
        self.stopped.set()

    def peer_cause(self) -> str | None:
        """`rank R: cause` when another rank has failed, else None."""
        try:
            if self.store.check([self.KEY]):
                rank, cause = self.store.get(self.KEY).decode().split("\t", 1)
                return f"rank {rank}: {cause}" if rank != str(self.rank) else None
        except Exception:  # noqa: BLE001 - no store: no word from the others
            pass
        return None

    def _watch(self) -> None:
        import os

        lost = False
        while not self.stopped.wait(self.WATCH_S):
            try:
                if not self.store.check([self.KEY]):
                    lost = False
                    continue
                rank, cause = self.store.get(self.KEY).decode().split("\t", 1)
            except Exception:  # noqa: BLE001 - no answer: rank 0 has ended, or is ending with the run (once more)
                if not lost:
                    lost = True
                    continue
                rank, cause = "0", "its process ended (see its log)"
            if self.stopped.is_set() or rank == str(self.rank):
                return
            if self.rank == 0 and rank != "0":
                results.write_failure(Path(self.job.run_dir), self.job.name, self.job.seed, f"rank {rank}: {cause}",
                                      self.job.meta)
            print(f"rank {rank} of this run failed ({cause}): rank {self.rank} ends too", flush=True)
            # not an exception: the main thread is blocked in a collective; the run lock of a dead holder is
            # taken over by the next claim, and the checkpoint on disk is the last whole one
            os._exit(1)


def claim(out: Path, lock: results.RunLock):
    """None when this process now owns the run; "done" when it is finished (looked at again once the lock is
    ours: another process may have finished it meanwhile); else the live holder."""
    if results.is_done(out):
        return "done"
    holder = lock.acquire()
    if holder is None and results.is_done(out):
        lock.release()
        return "done"
    if holder is None:  # a failed attempt's summary and traceback would speak for this one while it trains
        # and a write cut short (a worker that stopped itself mid-write) leaves its temporary file: not the run's
        for stale in (out / "summary.json", out / "error.txt", *out.glob("error.rank*.txt"), *out.glob(".*.pt.*")):
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
    cfg = parse(job.cfg)
    if cfg.train is None or cfg.data is None:
        raise RoadmapError(f"{job.name}: the config has no recipe (train and data sections)")
    device = train_device(job.device, world)
    from ..data import SkippedImages

    # from here a stop signal is Breaks': until training begins (the data read, the network built) it acts at once
    # (under DDP: all ranks, when they arm), then at a step's end, the run's place saved
    with Breaks(cfg.train.checkpoint_every_min, rank, world, device) as breaks:
        rng.seed_all(job.seed + rank)
        if rank == 0:
            results.write_text(out / "config.yaml", to_yaml(cfg))
        skipped = SkippedImages(out / "skipped.txt")
        trainer = Trainer(cfg, job.seed, device, rank, world, skipped)
        try:
            return _epochs(job, cfg, out, rank, world, device, breaks, trainer, skipped)
        finally:
            trainer.close()


def _epochs(job: Job, cfg, out: Path, rank: int, world: int, device, breaks: Breaks, trainer: Trainer,
            skipped) -> dict:
    t = cfg.train
    for note in trainer.notes:
        _say(rank, f"  {note}")
    batches = len(trainer.train_loader)
    history, best, start, place, resumes = [], -1.0, 0, None, []
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        saved, note = state.resume(trainer, checkpoint)
        history, best, start = saved["history"], saved["best_top1"], saved["epoch"] + 1
        place, other_world = state.place(trainer, saved)
        resumes = [*saved.get("resumes", []), {"epoch": start + 1, "batch": place["batch"] if place else 0,
                                               "batches": batches, "lost_s": _lost_s(out, saved)}]
        lost = f" ({resumes[-1]['lost_s']:.0f} s of training lost)" if resumes[-1]["lost_s"] is not None else ""
        _say(rank, f"  resuming {job.name} seed{job.seed} " + (
            f"in epoch {start + 1}/{t.epochs} at batch {place['batch']}/{batches}" if place else
            f"after epoch {start}/{t.epochs}") + lost)
        for line in (note, other_world):
            if line:
                _say(rank, f"  {line}")
    if rank == 0 and start == 0 and place is None:
        _say(rank, f"  {job.name} seed{job.seed}: batch {t.batch_size} × {world} process(es) × {trainer.accum} "
                   f"accumulation step(s) = {trainer.effective_batch}"
                   f", lr {t.lr:g} × {trainer.effective_batch}/{t.base_batch_size} = {trainer.lr:.3g} "
                   f"(linear scaling), {len(trainer.classes)} classes, {device}")
    alive = _Heartbeat(out if rank == 0 else None)
    started = time.time()

    def on_step(step: int, loss, lr: float) -> None:
        trackers.step(step, loss, lr)
        alive.beat()

    def pause(epoch: int, mine: dict, stop: bool) -> None:
        """Every rank's place in `epoch` into the checkpoint; then, when the run stops there, its end."""
        places, every_rng = state.gather(trainer, mine), state.streams(trainer)
        if rank == 0:
            saved = state.snapshot(trainer, epoch - 1, history, best, every_rng, places, resumes)
            results.atomic_write(checkpoint, lambda f: torch.save(saved, f))
            _say(rank, f"    saved in epoch {epoch + 1} at batch {mine['batch']}/{batches}" +
                 (": the run stops, and resumes from there" if stop else ""))
        breaks.saved()
        if stop:
            if world > 1:  # no rank ends before the place is on disk (a cluster may end a job's step with it)
                torch.distributed.barrier()
            breaks.stop()

    trackers = Trackers(job.log if rank == 0 else (), out, job.log_every_steps, job=job,
                        config=cfg.model_dump(mode="json"), **job.wandb)
    try:
        breaks.arm()
        for epoch in range(start, t.epochs):
            # an epoch resumed in its middle: its time includes the part trained before the stop
            tick, resumed_at = time.time() - (place["train_s"] if place else 0.0), place["batch"] if place else None
            with progress_bar(batches, f"{job.name} s{job.seed} {epoch + 1}/{t.epochs}") as bar:
                trained = trainer.train_epoch(
                    epoch, bar, on_step, say=(bar.write if not bar.disable else _print) if rank == 0 else None,
                    place=place, breaks=breaks, pause=lambda mine, stop, e=epoch: pause(e, mine, stop))
            place = None
            metrics = {"epoch": epoch + 1, **trained, **trainer.evaluate(trainer.compiled),
                       "lr": trainer.optimizer.param_groups[0]["lr"], "epoch_s": time.time() - tick,
                       **({"resumed_at_batch": resumed_at, "batches": batches} if resumed_at else {})}
            if trainer.ema is not None:
                metrics.update({f"ema_{k}": v for k, v in trainer.evaluate(trainer.ema_compiled).items()})
            history.append(metrics)
            every_rng = state.streams(trainer)  # on every rank, at the same point
            if rank == 0:
                if metrics["top1"] > best:
                    best = metrics["top1"]
                    results.atomic_write(out / "best.pt", lambda f: torch.save(
                        {"model": trainer.model.state_dict(), "epoch": epoch + 1, "classes": trainer.classes}, f))
                # the checkpoint first: metrics.jsonl is rewritten from its history, so a crash between the two
                # files never leaves a line that a resumed run would write again
                saved = state.snapshot(trainer, epoch, history, best, every_rng, resumes=resumes)
                results.atomic_write(checkpoint, lambda f: torch.save(saved, f))
                results.write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
            breaks.saved()
            trackers.epoch(metrics)
            _say(rank, f"    epoch {epoch + 1}/{t.epochs}  loss {trained['train_loss']:.3f}  "
                       f"top-1 {metrics['top1']:.1f}%  top-5 {metrics['top5']:.1f}%  ({results.epoch_times(metrics)})"
                       + results.resumed_note(metrics))
            if epoch + 1 < t.epochs and breaks.agree_to_stop():
                _say(rank, f"    the run stops after epoch {epoch + 1}, its checkpoint saved, and resumes from there")
                breaks.stop()
            if job.stop_after is not None and epoch + 1 - start >= job.stop_after and epoch + 1 < t.epochs:
                return {"status": "interrupted", "epoch": epoch + 1}
    finally:
        trackers.close()
    done = provenance.summary(job, cfg, trainer, history, best, time.time() - started, world, skipped.count(),
                              resumes)
    if rank == 0:
        results.write_json(out / "summary.json", done)
    return done


HEARTBEAT = "heartbeat"  # in the run folder: the time of rank 0's last optimizer step


class _Heartbeat:
    """The time of rank 0's last optimizer step, written every BEAT_S at most (HEARTBEAT in the run folder): how
    much training a run that died without saving lost, its resume reads (`_lost_s`)."""

    BEAT_S = 10.0

    def __init__(self, out: Path | None):
        self.path, self.last = (out / HEARTBEAT if out is not None else None), 0.0

    def beat(self) -> None:
        now = time.time()
        if self.path is not None and now - self.last >= self.BEAT_S:
            results.write_text(self.path, f"{now}\n")
            self.last = now


def _lost_s(out: Path, saved: dict) -> float | None:
    """Seconds trained after the checkpoint's save by the attempt that ended (within _Heartbeat.BEAT_S), None for a
    checkpoint of an earlier version."""
    try:
        last = float((out / HEARTBEAT).read_text())
    except (OSError, ValueError):
        last = None
    if "saved_at" not in saved:
        return None
    return max(0.0, last - saved["saved_at"]) if last is not None else 0.0


def _print(text: str) -> None:
    print(text, flush=True)


def _say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)
