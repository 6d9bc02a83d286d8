"""Mounting: the only place that mounts and unmounts with pyfuse3 (luofs/kernel.py runs
its main loop between the two)."""

from __future__ import annotations

import ctypes
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
        if not self._mounted:
            return
        self._mounted = False
        # Through the held descriptor an unmount costs ~3.5 ms more than by path (in the
        # blackout): by path, then, when the mount table says our mount is what the path
        # names, the last component no link; else through the descriptor.
        if self.target != self.root and self._ours_at_root():
            try:
                _umount2(self.root, MNT_DETACH | UMOUNT_NOFOLLOW)
            except OSError:
                pass
            else:
                pyfuse3.close(unmount=False)
                return
        pyfuse3.close(unmount=True)

    def _ours_at_root(self) -> bool:
        """Read from the mount table, never by a stat: the loop that would answer one has
        stopped."""
        entry = topmost(self.root)
        return entry is not None and entry.mount_id == self.fs.mnt_id != -1


MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded with the kernel, not in the blackout


def _umount2(path: str, flags: int) -> None:
    if _LIBC.umount2(os.fsencode(path), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
