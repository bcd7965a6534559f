"""processes.py: whether a process of this host lives, by its pid and its start time."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convnext_roadmap import processes

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="start times and zombies are read from /proc")


def test_a_live_process_an_ended_one_and_a_later_one_with_the_same_pid():
    me = os.getpid()
    assert processes.alive(me) and processes.alive(str(me))
    assert processes.alive(me, processes.started(me))
    assert not processes.alive(me, "1")  # another start time: a later process given this pid, not the one asked of
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    since = processes.started(child.pid)
    assert since is not None and processes.alive(child.pid, since)
    child.kill()
    child.wait()
    assert not processes.alive(child.pid, since) and processes.started(child.pid) is None
    assert not processes.alive("not a pid")


def test_a_zombie_has_ended():
    # a child that has exited but not been waited for: /proc still lists it, in state Z
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < deadline:
        time.sleep(0.01)
    assert not processes.alive(child.pid) and not processes.alive(child.pid, "0")
    child.wait()
