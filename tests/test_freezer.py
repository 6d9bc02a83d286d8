"""luofs/freezer.py: a userspace's cgroup, frozen at a kexec; what dead machines left is
swept; without a unified hierarchy there is none (the userspace is killed instead)."""

import os
import subprocess
import time

import pytest

from luofs import freezer

CGROUP2 = freezer._mount() is not None and freezer._own_path() is not None
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not CGROUP2,
                                reason="needs root and a cgroup2 mount")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_frozen_cgroup_stops_its_processes_and_sigkill_still_ends_them():
    group = freezer.Cgroup.make(f"{freezer.PREFIX}{os.getpid()}-test")
    proc = subprocess.Popen(["sh", "-c", f"echo 0 > {group.path}/cgroup.procs; "
                             "while :; do :; done"])
    try:
        time.sleep(0.2)
        assert group.freeze()
        time.sleep(0.2)
        with open(f"/proc/{proc.pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[11])
        time.sleep(0.3)
        with open(f"/proc/{proc.pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[11]) == ticks  # no CPU any more
        proc.kill()
        assert proc.wait(5) == -9
    finally:
        proc.kill()
        proc.wait()
        group.remove()
    assert not os.path.exists(group.path)


def test_what_dead_machines_left_is_swept_and_nothing_else():
    parent = os.path.dirname(freezer.Cgroup.make(f"{freezer.PREFIX}{os.getpid()}-a").path)
    dead = os.path.join(parent, f"{freezer.PREFIX}{dead_pid()}-0")
    alive = os.path.join(parent, f"{freezer.PREFIX}{os.getpid()}-a")
    os.mkdir(dead)
    try:
        freezer.Cgroup.make(f"{freezer.PREFIX}{os.getpid()}-b").remove()
        assert not os.path.exists(dead) and os.path.exists(alive)
    finally:
        for path in (dead, alive):
            if os.path.exists(path):
                os.rmdir(path)


def test_without_a_unified_hierarchy_there_is_no_cgroup(monkeypatch):
    monkeypatch.setattr(freezer, "_mount", lambda: None)
    assert freezer.Cgroup.make(f"{freezer.PREFIX}{os.getpid()}-none") is None
    assert freezer.of_process(os.getpid()) is None
    freezer.join(None)  # nothing to join: nothing happens
