"""A memory cgroup around this process and its children, for anything big.

A child of the cgroup this process is in (v1 `memory` or v2), so limits above it still
hold; this process moves in, and back out when done. Unhappy path: no writable cgroup
file system (CgroupUnavailable): the caller must not run the big figures then.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager


class CgroupUnavailable(RuntimeError):
    pass


def _current() -> tuple[str, str, str]:
    """(mount, this process's cgroup path, limit file name)."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _n, controllers, path in lines:
        if "memory" in controllers.split(","):
            return "/sys/fs/cgroup/memory", path, "memory.limit_in_bytes"
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "/sys/fs/cgroup", next(p for n, c, p in lines if n == "0"), "memory.max"
    raise CgroupUnavailable("no memory cgroup controller")


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


@contextmanager
def limited(limit_bytes: int):
    mount, here, limit_file = _current()
    home = mount + here.rstrip("/")
    cgroup = f"{home}/luofs-bench-{os.getpid()}"
    try:
        os.mkdir(cgroup)
        _write(f"{cgroup}/{limit_file}", limit_bytes)
        _write(f"{cgroup}/cgroup.procs", os.getpid())
    except OSError as e:
        raise CgroupUnavailable(f"cannot make a memory cgroup under {home}: {e}") from None
    try:
        yield cgroup
    finally:
        _write(f"{home}/cgroup.procs", os.getpid())
        for _ in range(100):  # until the children that were in it have gone
            try:
                os.rmdir(cgroup)
                break
            except OSError:
                time.sleep(0.1)
