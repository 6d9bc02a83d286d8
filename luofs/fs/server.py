"""Mounting and serving: the only place that starts and stops pyfuse3."""

from __future__ import annotations

import logging
import os

import pyfuse3
import trio

from .ops import KernelFS

log = logging.getLogger("luofs.fs")

MOUNT_OPTIONS = ("fsname=luofs", "subtype=luofs", "allow_other", "default_permissions")


def mount_id(target: str) -> int:
    """The mount id of the topmost mount at `target` (a resolved path; resolving it here
    would stat our own mount from the loop that must answer), as fdinfo's mnt_id says."""
    found = -1
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == target:
                found = int(fields[0])
    return found


class Mount:
    """Context manager: mount `fs` at `root` and always unmount, also on the error path."""

    def __init__(self, fs: KernelFS, root: str):
        self.fs = fs
        self.root = os.path.realpath(root)  # before mounting: afterwards it would deadlock
        self._mounted = False

    def __enter__(self):
        pyfuse3.init(self.fs, self.root, set(MOUNT_OPTIONS))
        self._mounted = True
        self.fs.mnt_id = mount_id(self.root)
        return self

    def __exit__(self, *exc):
        self.unmount()

    def unmount(self) -> None:
        if self._mounted:
            self._mounted = False
            pyfuse3.close(unmount=True)


async def serve_forever(fs: KernelFS, root: str, *, started=None) -> None:
    with Mount(fs, root):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            if started is not None:
                await started(nursery)
