"""Mounting: the only place that mounts and unmounts with pyfuse3 (luofs/kernel.py runs
its main loop between the two)."""

from __future__ import annotations

import errno
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


class NotEmpty(OSError):
    pass


class Mount:
    """Context manager: mount `fs` at `root` and always unmount, also on the error path.

    With `root_fd` (an O_PATH descriptor of the directory, opened once by the machine)
    the mount goes onto that very directory through /proc/self/fd, never onto whatever
    the path names now; a directory that is not empty is refused (NotEmpty): mounting
    would hide its files."""

    def __init__(self, fs: KernelFS, root: str, root_fd: int | None = None):
        self.fs = fs
        self.root = os.path.realpath(root)  # before mounting: afterwards it would deadlock
        self.target = self.root if root_fd is None else f"/proc/self/fd/{root_fd}"
        self._mounted = False

    def __enter__(self):
        if os.listdir(self.target):  # the directory itself, not a mount stacked on it
            raise NotEmpty(errno.ENOTEMPTY, f"{self.root} is not empty: luofs will not "
                                            "mount over it and hide its files")
        pyfuse3.init(self.fs, self.target, set(MOUNT_OPTIONS))
        self._mounted = True
        self.fs.mnt_id = mount_id(self.root)
        return self

    def __exit__(self, *exc):
        self.unmount()

    def unmount(self) -> None:
        if self._mounted:
            self._mounted = False
            pyfuse3.close(unmount=True)
