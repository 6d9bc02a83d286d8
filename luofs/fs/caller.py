"""The calling process, as the FUSE kernel module reported it (never as the client claims).

pyfuse3 gives the calling *thread's* id on getxattr and create. A pidfd for that
thread (PIDFD_THREAD) names it without a pid-reuse race from here on: the thread
is blocked in our request, and pidfd_getfd(2) takes the caller's open file
description itself, with its file position.

Files are told apart by the file system they are on (st_dev) and their inode, read
with statx(AT_STATX_DONT_SYNC) — never by mount id: a caller in another mount
namespace (unshare -m, a container, a service with private mounts) or one that
opened the device through a bind mount holds our files through another copy of the
mount, with another id (DESIGN.md, "Pitfalls").
"""

from __future__ import annotations

import errno
import fcntl
import os

from .. import fileid
from ..core.errors import LuoError
from ..fdutil import MountTypes, OwnedFile, close_off_loop, fdinfo, pidfd_getfd, pidfd_open_thread
from ..uapi import errnos

_O_PATH = getattr(os, "O_PATH", 0o10000000)


class FuseCaller:
    def __init__(self, tid: int, mounts: MountTypes, own_mnt_id: int = -1, *,
                 fd_table_full: bool = False):
        self.tid = tid
        self._mounts = mounts
        self._own_mnt_id = own_mnt_id
        self._fd_table_full = fd_table_full
        self._pidfd: int | None = None

    # Caller protocol -------------------------------------------------------------

    def reserve_fd(self) -> None:
        if self._fd_table_full:
            raise LuoError(errnos.EMFILE, "the caller's fd table is full")

    def take_file(self, fd: int) -> OwnedFile:
        """EBADF for an fd the caller does not have open, or an O_PATH one (§9).

        A FUSE file (a session fd, the device, any file of a FUSE mount) is refused with
        ENOENT before it is taken: no handler accepts one, and a copy held here would
        outlive the caller's close — its release would wait for a close off the loop.
        One statx of the caller's fd says whether it is open and where it lives; whether
        it is O_PATH is read from our copy (F_GETFL), or from fdinfo where that decides
        the errno before anything is taken: a FUSE file, or a take that fails.
        """
        try:
            target = fileid.of_process_fd(self.tid, fd) if fd >= 0 else None
        except OSError:
            target = None
        if target is None:
            raise LuoError(errnos.EBADF, f"caller {self.tid} has no fd {fd}")
        mnt_id = target.mnt_id if target.mnt_id >= 0 else self._fdinfo(fd)[1]
        if self._fstype(mnt_id, target.dev).startswith("fuse"):
            self._refuse_o_path(fd)
            raise LuoError(errnos.ENOENT, f"fd {fd} is a FUSE file: no handler accepts it")
        try:
            file = self._take(fd)
        except LuoError:
            self._refuse_o_path(fd)
            raise
        if fcntl.fcntl(file.fd, fcntl.F_GETFL) & _O_PATH:
            file.close()
            raise LuoError(errnos.EBADF, f"fd {fd} is an O_PATH descriptor")
        if file.is_fuse:  # the caller swapped the fd in between: refuse it the same way
            file.close()
            raise LuoError(errnos.ENOENT, f"fd {fd} is a FUSE file: no handler accepts it")
        return file

    def _fdinfo(self, fd: int) -> tuple[int, int]:
        """(flags, mnt_id) of the caller's fd; EBADF if fdinfo cannot say."""
        try:
            info = fdinfo(self.tid, fd)
        except OSError:
            raise LuoError(errnos.EBADF, f"caller {self.tid} has no fd {fd}") from None
        try:
            return int(info["flags"], 8), int(info["mnt_id"])
        except (KeyError, ValueError):
            raise LuoError(errnos.EBADF, f"cannot read fdinfo of fd {fd}") from None

    def _refuse_o_path(self, fd: int) -> None:
        """EBADF for an O_PATH fd: the kernel's fdget refuses one before anything else."""
        if self._fdinfo(fd)[0] & _O_PATH:
            raise LuoError(errnos.EBADF, f"fd {fd} is an O_PATH descriptor")

    # -------------------------------------------------------------------------------

    def take_socket(self, fd: int) -> OwnedFile:
        return self._take(fd)

    def _take(self, fd: int) -> OwnedFile:
        if fd < 0:
            raise LuoError(errnos.EBADF, f"fd {fd} is not a valid descriptor")
        try:
            if self._pidfd is None:
                self._pidfd = pidfd_open_thread(self.tid)
            newfd = pidfd_getfd(self._pidfd, fd)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise LuoError(errnos.EBADF, f"caller {self.tid} is gone") from None
            if e.errno in (errno.EMFILE, errno.ENFILE):  # our table, not the caller's
                raise LuoError(errnos.ENOMEM, "the emulated kernel cannot hold more files "
                                              "(its RLIMIT_NOFILE is reached)") from None
            raise LuoError(errnos.EBADF, f"caller {self.tid} has no fd {fd}") from None
        try:
            ours = fileid.of_fd(newfd)
            mnt_id = ours.mnt_id if ours.mnt_id >= 0 else int(fdinfo("self", newfd)["mnt_id"])
            fstype = self._fstype(mnt_id, ours.dev)
        except (OSError, KeyError, ValueError):
            close_off_loop(newfd)  # unknown kind of file: never risk a blocking close here
            raise LuoError(errnos.EBADF, f"cannot classify fd {fd}") from None
        return OwnedFile(newfd, fstype)

    def _fstype(self, mnt_id: int, dev: int) -> str:
        """Our own file system by st_dev, whatever copy of the mount; others by mount id,
        in our mount namespace or else the caller's."""
        if dev == self._mounts.dev(self._own_mnt_id):
            return self._mounts.fstype(self._own_mnt_id) or "fuse"
        return self._mounts.fstype(mnt_id, dev, self.tid) if mnt_id > 0 else ""

    def close(self) -> None:
        if self._pidfd is not None:  # opened only if a file was taken
            os.close(self._pidfd)
            self._pidfd = None


def inode_behind(tid: int, fd: int, mnt_id: int, mounts: MountTypes) -> int | None:
    """The inode number of our file system that the caller's `fd` refers to, if any.

    `mnt_id` is our own mount (in our namespace): its st_dev names our file system,
    which the caller may reach through any copy of the mount. Read from procfs, so the
    caller's word (the fd number) is checked against what the kernel says the calling
    process really holds.
    """
    own_dev = mounts.dev(mnt_id)
    if own_dev is None or fd < 0:
        return None
    try:
        target = fileid.of_process_fd(tid, fd)
    except OSError:
        return None
    return target.ino if target.dev == own_dev else None
