"""Thin bindings the standard library lacks: pidfd_getfd, fstatfs, fdinfo.

Also the one rule that keeps the daemon alive: it must never make a blocking
file-system call on a FUSE file from its own event loop (the request would wait
for the loop that issued it). Files taken from callers are classified from
procfs first, without touching the file itself.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_pidfd_getfd = 438  # the same on x86_64 and the generic table (arm64, riscv)
PIDFD_THREAD = os.O_EXCL  # lets pidfd_open name any thread, not only a group leader

TMPFS_MAGIC = 0x01021994
HUGETLBFS_MAGIC = 0x958458F6
ANON_INODE_FS_MAGIC = 0x09041934


def pidfd_open_thread(tid: int) -> int:
    return os.pidfd_open(tid, PIDFD_THREAD)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A new fd in this process for the *same open file description* as the target's."""
    fd = _libc.syscall(SYS_pidfd_getfd, pidfd, targetfd, 0)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def fstatfs_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is the first long
    if _libc.fstatfs(fd, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], "little", signed=True)


def fdinfo(pid: int | str, fd: int) -> dict[str, str]:
    """Fields of /proc/PID/fdinfo/FD (pos, flags, mnt_id, ino); ENOENT if fd is not open."""
    with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
        text = f.read().decode("ascii", "replace")
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


class MountTypes:
    """mnt_id → file-system type, from /proc/self/mountinfo, cached."""

    def __init__(self):
        self._types: dict[int, str] = {}

    def fstype(self, mnt_id: int) -> str:
        if mnt_id not in self._types:
            self._refresh()
        return self._types.get(mnt_id, "")

    def _refresh(self) -> None:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                self._types[int(fields[0])] = fields[sep + 1]


_closer_queue: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer_started = threading.Lock()
_closer_running = False


def close_off_loop(fd: int) -> None:
    """Close an fd from a helper thread: closing a FUSE file sends FLUSH to its daemon,
    which may be this very process."""
    global _closer_running
    with _closer_started:
        if not _closer_running:
            threading.Thread(target=_closer, name="luofs-closer", daemon=True).start()
            _closer_running = True
    _closer_queue.put(fd)


def _closer() -> None:
    while True:
        fd = _closer_queue.get()
        try:
            os.close(fd)
        except OSError:
            pass


class OwnedFile:
    """A file the daemon holds a reference to: its own fd on the caller's open file, or,
    once parked (luofs/filestore.py), a (keeper, slot) there instead."""

    __slots__ = ("fd", "fstype", "_closed", "parked", "vault", "pinned")

    def __init__(self, fd: int, fstype: str = "", parked=None, vault=None):
        self.fd = fd
        self.fstype = fstype
        self._closed = False
        self.parked = parked  # (keeper, slot) while the vault holds the file
        self.vault = vault  # the vault that counts or holds it, if any
        self.pinned = 0  # bytes of the machine's memory this file's preservation holds

    @property
    def is_fuse(self) -> bool:
        return self.fstype.startswith("fuse")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.parked is not None:
            self.vault.drop(self.parked)
            return
        if self.vault is not None:
            self.vault.direct -= 1
        if self.is_fuse:
            close_off_loop(self.fd)
        else:
            os.close(self.fd)

    def __repr__(self) -> str:
        return f"<OwnedFile fd={self.fd} {self.fstype or '?'}>"

