"""When a run saves its place in the middle of an epoch, and when it stops there: on a signal (SLURM's time-out or
preemption, SIGTERM, Ctrl-C) or every `train.checkpoint_every_min` minutes, at an optimizer step's end, decided
once for every rank."""

from __future__ import annotations

import signal
import threading
import time

import torch

from ..processes import cluster_signal, stop_signals

# what every rank does at a step's end: a stop is STOP + its signal's number, so that a rank the signal did not
# reach hands on the one that came
GO_ON, SAVE, STOP = 0, 1, 2


class Interrupted(BaseException):
    """The run stops on a signal, its place saved (or, asked before training or twice, from its last checkpoint):
    not a failure (no failed summary), not an `Exception`."""

    def __init__(self, signum: int, saved: bool = True):
        super().__init__(f"stopped by {signal.Signals(signum).name}, " +
                         ("its place saved" if saved else "before a save: it resumes from its last checkpoint"))
        self.signum = signum


class Breaks:
    """The stops of one run. Until its training begins (`arm`), a stop signal acts at once in a run of one process
    (nothing is trained yet); under DDP the ranks decide it together when they arm. Then it is held until the step
    in progress has ended and the run has saved its place (`at_step`: a stop); `stop` hands it to the handler that
    was there before (submitit's requeue, the command's exit, Python's KeyboardInterrupt) and ends the run. A signal
    the process ignored stays ignored (a local worker's Ctrl-C: its launch stops it with SIGTERM). The same stop
    delivered twice within REPEAT_S (a cluster's signal by two routes) is one; a later one, while the first waits,
    acts at once, without a save, in a run of one process (under DDP a rank alone must not leave the others in a
    collective: its launch ends them all). Under DDP every rank does what the ranks together decided: each step's
    wish is all-reduced (max) behind the step and read at the next one, so the host never waits for the device's
    step in progress; rank 0's clock alone asks for the timed saves."""

    REPEAT_S = 2.0

    def __init__(self, every_min: float, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.every_s = 60 * every_min
        self.rank, self.world, self.device = rank, world, device or torch.device("cpu")
        self.requested: int | None = None
        self.asked_at, self.armed, self.said = 0.0, False, False
        self.last_save = time.monotonic()
        self.previous: dict[int, object] = {}
        self.pending = None

    def __enter__(self) -> Breaks:
        if threading.current_thread() is threading.main_thread():  # Python's signal handlers live there
            for signum in stop_signals():
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._hold)
        return self

    def __exit__(self, kind, *_) -> None:
        # asked for in the run's last epoch, which it finished: the signal does now what it came to do, but a
        # cluster's time-out signal, whose requeue a finished run no longer needs
        if kind is None and self.requested is not None and self.previous and self.requested != cluster_signal():
            self._hand_on(self.requested)
        self._restore()

    def arm(self) -> None:
        """Training begins: from here a stop signal waits for a step's end. Under DDP, a signal that came before
        (to any rank) stops every rank here, together."""
        self.armed = True
        if self.world > 1 and self.agree_to_stop():
            self._hand_on(self.requested)
            raise Interrupted(self.requested, saved=False)

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self.previous = {}

    def _hold(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.requested is not None and now - self.asked_at < self.REPEAT_S:
            return  # the same stop, by another route
        if self.world == 1 and (not self.armed or self.requested is not None):  # nothing to save yet, or asked
            self._hand_on(signum)  # again: no more waiting
            raise Interrupted(signum, saved=False)
        if self.requested is None:
            self.requested, self.asked_at = signum, now

    def _hand_on(self, signum: int) -> None:
        """The signal to the handler this process had before (which may exit, requeue, or raise)."""
        handler = self.previous.get(signum) or signal.SIG_DFL  # None: set outside Python
        self._restore()
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)

    def stop(self):
        """After the run saved its place: the signal's own handler, then the run ends."""
        signum = self.requested or signal.SIGTERM
        self._hand_on(signum)
        raise Interrupted(signum)

    def _say(self) -> None:
        if self.requested is not None and not self.said:  # here, not in the handler: a print there may re-enter one
            self.said = True
            print(f"{signal.Signals(self.requested).name}: the run stops after this step, its place saved",
                  flush=True)

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def _mine(self, agreed: int) -> int:
        self._say()
        if self.requested is not None:
            return STOP + self.requested
        due = self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        return SAVE if self.rank == 0 and due and agreed == GO_ON else GO_ON

    def at_step(self) -> int:
        """GO_ON, SAVE, or a stop (≥ STOP) at this optimizer step's end: the same on every rank (each calls it at
        every step)."""
        if self.world == 1:
            return self._mine(GO_ON)
        agreed = self._read() if self.pending is not None else GO_ON
        self.pending = self._all_reduce(self._mine(agreed))
        return self._adopt(agreed)

    def _adopt(self, agreed: int) -> int:
        if agreed >= STOP and self.requested is None:  # another rank's signal: this one stops as it does, and its
            self.requested, self.asked_at = agreed - STOP, time.monotonic()  # own copy, when it comes, is that one
        self._say()
        return agreed

    def agree_to_stop(self) -> bool:
        """Whether the run stops here, between epochs (every rank asks, in step): a signal that came before the
        first step or in an epoch's last."""
        if self.world == 1:
            self._say()
            return self.requested is not None
        if self.pending is not None:
            self._read()  # a wish behind the epoch's last step: asked again below, at once
        self.pending = self._all_reduce(STOP + self.requested if self.requested is not None else GO_ON)
        return self._adopt(self._read()) >= STOP

    def _all_reduce(self, wish: int):
        flag = torch.full((1,), wish, dtype=torch.int32, device=self.device)  # made there: no copy, no wait
        work = torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, async_op=True)
        if self.device.type != "cuda":
            return flag, work, None
        work.wait()  # the current stream waits for it, not the host
        host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, None, done

    def _read(self) -> int:
        flag, work, done = self.pending
        self.pending = None
        if done is not None:
            done.synchronize()  # the step before this one: the one in progress stays queued
        else:
            work.wait()
        return int(flag[0])
