"""Mounting: the only place that mounts and unmounts with pyfuse3 (luofs/kernel.py runs
its main loop between the two)."""

from __future__ import annotations

import os

import pyfuse3

from ..mounts import topmost
from .ops import KernelFS

MOUNT_OPTIONS = ("fsname=luofs", "subtype=luofs", "allow_other", "default_permissions")


def mount_id(target: str) -> int:
    """The mount id of the topmost mount at `target` (a resolved path), as fdinfo's
    mnt_id says, or -1."""
    entry = topmost(target)
    return -1 if entry is None else entry.mount_id


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
