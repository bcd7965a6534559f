"""Whether a process of this host is alive, asked one way: by its pid and, where /proc tells it, its start time
(so that a later process given the same pid is not taken for it)."""

from __future__ import annotations

import os
from pathlib import Path


def started(pid: int) -> str | None:
    """When process `pid` started (Linux: /proc/PID/stat's start time, in clock ticks), to tell it from a later
    process given the same pid; None where /proc has no such process, or it has ended (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has ended: only its exit status is left


def alive(pid: int | str, since: str | None = None) -> bool:
    """Whether process `pid` runs on this host: with `since` (its `started`), that very process."""
    try:
        pid = int(pid)
    except ValueError:
        return False
    if Path("/proc").is_dir():
        now = started(pid)
        return now is not None and (since is None or now == since)
    try:  # no /proc (macOS): whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
