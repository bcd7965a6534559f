"""When a run saves its place in the middle of an epoch, and when it stops there: on a signal (SLURM's time-out or
preemption, SIGTERM, Ctrl-C) or every `train.checkpoint_every_min` minutes, at an optimizer step's end, decided
once for every rank."""

from __future__ import annotations

import os
import signal
import threading
import time

import torch

GO_ON, SAVE, STOP = 0, 1, 2  # what every rank does at a step's end


class Interrupted(BaseException):
    """The run has saved its place and stops: not a failure (no failed summary), not an `Exception`."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}, its place saved")
        self.signum = signum


def stop_signals() -> list[int]:
    """SIGINT, SIGTERM, and the one submitit's jobs take as a time-out or preemption (SIGUSR2 unless set)."""
    cluster = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    return list(dict.fromkeys([signal.SIGINT, signal.SIGTERM, cluster]))


class Breaks:
    """The stops of one run. A stop signal is held until the step in progress has ended and the run has saved its
    place (`at_step`: STOP); then `stop` hands it to the handler that was there before (submitit's requeue, the
    command's exit, Python's KeyboardInterrupt) and ends the run. A second signal while the first waits is handed on
    at once. Under DDP every rank does what the ranks together decided: each step's wish is all-reduced (max) behind
    the step and read at the next one, so the host never waits for the device's step in progress; rank 0's clock
    alone asks for the timed saves."""

    def __init__(self, every_min: float, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.every_s = 60 * every_min
        self.rank, self.world, self.device = rank, world, device or torch.device("cpu")
        self.requested: int | None = None
        self.last_save = time.monotonic()
        self.previous: dict[int, object] = {}
        self.pending = None

    def __enter__(self) -> Breaks:
        if threading.current_thread() is threading.main_thread():  # Python's signal handlers live there
            for signum in stop_signals():
                self.previous[signum] = signal.signal(signum, self._hold)
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None and self.requested is not None and self.previous:
            # asked for in the run's last epoch, which it finished: the signal does now what it came to do
            self._hand_on(self.requested)
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _hold(self, signum: int, frame) -> None:
        if self.requested is not None:  # asked twice: no more waiting
            self._hand_on(signum)
            raise Interrupted(signum)
        self.requested = signum
        print(f"{signal.Signals(signum).name}: the run stops after this step, its place saved", flush=True)

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

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def _mine(self, agreed: int) -> int:
        if self.requested is not None:
            return STOP
        due = self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        return SAVE if self.rank == 0 and due and agreed == GO_ON else GO_ON

    def at_step(self) -> int:
        """GO_ON, SAVE or STOP at this optimizer step's end: the same on every rank (each calls it at every step)."""
        if self.world == 1:
            return self._mine(GO_ON)
        agreed = self._read() if self.pending is not None else GO_ON
        self.pending = self._all_reduce(self._mine(agreed))
        return agreed

    def agree_to_stop(self) -> bool:
        """Whether the run stops here, between epochs (every rank asks, in step): a signal that came before the
        first step or in an epoch's last."""
        if self.world == 1:
            return self.requested is not None
        if self.pending is not None:
            self._read()  # a wish behind the epoch's last step: asked again below, at once
        self.pending = self._all_reduce(STOP if self.requested is not None else GO_ON)
        return self._read() == STOP

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
