"""Whether a process of this host is alive, asked one way: by its pid and, where /proc tells it, its start time
(so that a later process given the same pid is not taken for it); and which signals stop a run."""

from __future__ import annotations

import os
from pathlib import Path


ENDED = ("Z", "X")  # /proc's states of a process that has ended (a zombie: only its exit status is left)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces), or None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def started(pid: int) -> str | None:
    """When process `pid` started (Linux: /proc/PID/stat's start time, in clock ticks), to tell it from a later
    process given the same pid; None where /proc has no such process, or it has ended."""
    fields = _stat(pid)
    return None if fields is None or fields[0] in ENDED else fields[19]


def alive(pid: int | str, since: str | None = None) -> bool:
    """Whether process `pid` runs on this host: with `since` (its `started`, where /proc tells it), that very
    process; without, any process of that pid that has not ended (one of another user's that this one may not
    signal, or not see in /proc, counts as running)."""
    try:
        pid = int(pid)
    except ValueError:
        return False
    if since is not None and Path("/proc").is_dir():
        return started(pid) == since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return fields is None or fields[0] not in ENDED


def cluster_signal() -> int:
    """The signal submitit's jobs take as a time-out or preemption: SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names
    another."""
    import signal

    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def stop_signals() -> list[int]:
    """The signals that stop a run, its place saved (`train.interrupt`): SIGINT, SIGTERM, and `cluster_signal`."""
    import signal

    return list(dict.fromkeys([signal.SIGINT, signal.SIGTERM, cluster_signal()]))
