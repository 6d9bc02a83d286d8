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


_Statfs = ctypes.c_char * 128  # (a type called directly: create_string_buffer is Python)


def fstatfs_type(fd: int) -> int:
    buf = _Statfs()  # struct statfs; f_type is the first long
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
    """What file system a mount holds (type and st_dev), by mount id, cached.

    A mount id names one copy of a mount: a caller in another mount namespace holds
    files through ids that are not in our /proc/self/mountinfo, so a miss there is
    looked up in the caller's own mountinfo. Ids not found anywhere (memfds, sockets,
    pipes: kernel-internal mounts) type as "". Mount ids are reused once a mount is
    gone, so an entry is trusted only for the st_dev it was found with.
    """

    def __init__(self):
        self._mounts: dict[int, tuple[str, int]] = {}  # our namespace: id → (type, st_dev)
        self._seen: dict[tuple[int, int], str] = {}  # (id, st_dev) → type, any namespace

    def fstype(self, mnt_id: int, dev: int | None = None, tid: int | None = None) -> str:
        """The type of mount `mnt_id`; with `dev`, only if that mount is on that file
        system; with `tid`, also looked up in that process's mount namespace."""
        key = (mnt_id, dev)
        if dev is not None and key in self._seen:
            return self._seen[key]
        found = self._ours(mnt_id)
        if (found is None or (dev is not None and found[1] != dev)) and tid is not None:
            found = _mountinfo(f"/proc/{tid}/mountinfo").get(mnt_id)
        fstype = found[0] if found is not None and (dev is None or found[1] == dev) else ""
        if dev is not None:
            if len(self._seen) > 4096:  # namespaces come and go: never grow without bound
                self._seen.clear()
            self._seen[key] = fstype
        return fstype

    def dev(self, mnt_id: int) -> int | None:
        """st_dev of the file system of a mount in our namespace (our own mount, say)."""
        found = self._ours(mnt_id)
        return found[1] if found is not None else None

    def _ours(self, mnt_id: int) -> tuple[str, int] | None:
        if mnt_id not in self._mounts:
            self._mounts.update(_mountinfo("/proc/self/mountinfo"))
        return self._mounts.get(mnt_id)


def _mountinfo(path: str) -> dict[int, tuple[str, int]]:
    """mount id → (type, st_dev) of every mount listed in a mountinfo file; {} if unreadable."""
    mounts = {}
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                major, _, minor = fields[2].partition(":")
                sep = fields.index("-")
                mounts[int(fields[0])] = (fields[sep + 1], os.makedev(int(major), int(minor)))
    except (OSError, ValueError, IndexError):
        pass
    return mounts


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

    __slots__ = ("fd", "fstype", "_closed", "parked", "vault", "pinned", "ident")

    def __init__(self, fd: int, fstype: str = "", parked=None, vault=None):
        self.fd = fd
        self.fstype = fstype
        self._closed = False
        self.parked = parked  # (keeper, slot) while the vault holds the file
        self.vault = vault  # the vault that counts or holds it, if any
        self.pinned = 0  # bytes of the machine's memory this file's preservation holds
        # (st_dev, st_ino) once a handler has read them: an open file's never change, and
        # a preserve asks for them right after the handler's check has read them.
        self.ident = None

    @property
    def closed(self) -> bool:
        return self._closed

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

