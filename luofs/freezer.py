"""Freezing a kernel's userspace at the kexec, so that its end can wait (cgroup v2).

At a kexec the old kernel's userspace stops: after the freeze no process of it may
run again. Its end — every process killed, the kernel reaping their memory (the old
QEMU's page tables over a 4 GiB guest take the kernel milliseconds of CPU) — need not
compete with the next kernel and the next VMM for the CPU while a guest is paused.
So each userspace's PID 1 joins a cgroup of its own in the unified hierarchy; the
kexec freezes that cgroup (cgroup.freeze), and the machine kills the userspace once
the successors have taken over. A frozen process is still killed by SIGKILL.

Unhappy paths: no writable cgroup2 mount (no root, a cgroup v1-only host): `make()`
gives None and the userspace is killed at the freeze instead, as before. A machine
that is killed leaves its (empty) cgroups behind: the next `make()` sweeps those of
machines that are gone.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("luofs.userspace")


def _mount() -> str | None:
    """Where the unified hierarchy is mounted (/sys/fs/cgroup, or …/unified on a hybrid
    host), from our mount table."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[fields.index("-") + 1] == "cgroup2":
                    return fields[4]
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_path(pid: int | str = "self") -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return next((line.rstrip("\n")[3:] for line in f if line.startswith("0::")), None)
    except OSError:
        return None


def of_process(pid: int) -> str | None:
    """The cgroup directory of `pid` (a userspace's PID 1): what a program started in
    that userspace joins, so that it freezes with it. None without a unified hierarchy."""
    mount, path = _mount(), _own_path(pid)
    return None if mount is None or path is None else os.path.join(mount, path.lstrip("/"))


def join(path: str | None) -> None:
    """Move this process into cgroup `path` (writing 0 moves the writer)."""
    if path is None:
        return
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write("0")
    except OSError as e:  # it runs then, but a kexec does not freeze it: it is killed
        log.warning("cannot join %s: %s", path, e)


PREFIX = "luofs-userspace-"  # then the machine's pid, and a serial number


def _sweep(parent: str) -> None:
    """Remove what machines that died left (a killed machine cleans nothing up): only
    cgroups of machines that are gone, and only empty ones (rmdir refuses others)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(PREFIX):].partition("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class Cgroup:
    def __init__(self, path: str):
        self.path = path

    @classmethod
    def make(cls, name: str) -> "Cgroup | None":
        """A new cgroup `name` below ours; None if there can be none."""
        mount, own = _mount(), _own_path()
        if mount is None or own is None or os.geteuid() != 0:
            return None
        parent = os.path.join(mount, own.lstrip("/"))
        _sweep(parent)
        path = os.path.join(parent, name)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            log.info("no cgroup for userspaces (%s): they are killed at the freeze", e)
            return None
        if not os.path.exists(os.path.join(path, "cgroup.freeze")):  # a kernel before 5.2
            os.rmdir(path)
            return None
        return cls(path)

    def freeze(self) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.freeze"), "w") as f:
                f.write("1")
            return True
        except OSError as e:
            log.error("cannot freeze %s: %s", self.path, e)
            return False

    def remove(self) -> None:
        """Once its processes are gone (a dying process leaves it a moment later)."""
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        log.warning("cgroup %s is still in use; left behind", self.path)
