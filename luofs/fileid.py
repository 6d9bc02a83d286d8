"""Which file an fd or a /proc/PID/fd/N link names: (st_dev, st_ino, mode, mount id), never a
FUSE request.

A file is identified by the file system it is on (st_dev) and its inode, not by the
copy of the mount it was opened through: the same FUSE file seen from another mount
namespace or through a bind mount has another mount id but the same st_dev.

statx(2) with AT_STATX_DONT_SYNC answers from the inode the kernel already has: FUSE
sends no GETATTR then, so the daemon may call it on its own files from its event loop
(a plain stat could wait for the very loop that must answer it). Following the magic
link /proc/PID/fd/N jumps straight to the open file's path without a lookup or a
revalidation by the file system. The same call says which mount the open file was
opened through (STATX_MNT_ID, the id /proc/PID/fdinfo/N shows), so a request that takes
a caller's file reads no fdinfo on its way.

Unhappy paths: OSError with the kernel's errno (ENOENT: no such fd; EACCES: not ours
to inspect; ESRCH: the process is gone).
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

_libc = ctypes.CDLL(None, use_errno=True)

AT_EMPTY_PATH = 0x1000
AT_STATX_DONT_SYNC = 0x4000
STATX_TYPE = 0x1
STATX_MODE = 0x2
STATX_INO = 0x100
STATX_MNT_ID = 0x1000  # Linux 5.8; the mask the kernel returns says whether it is set


class _Timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("_reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):  # struct statx, <linux/stat.h>; 256 bytes in all
    _fields_ = [("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
                ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
                ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
                ("stx_mode", ctypes.c_uint16), ("_spare0", ctypes.c_uint16),
                ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
                ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
                ("stx_atime", _Timestamp), ("stx_btime", _Timestamp),
                ("stx_ctime", _Timestamp), ("stx_mtime", _Timestamp),
                ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
                ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
                ("stx_mnt_id", ctypes.c_uint64), ("_spare", ctypes.c_uint64 * 13)]


_STATX_SIZE = ctypes.sizeof(_Statx)
_StatxBuffer = ctypes.c_char * _STATX_SIZE  # an array: passed by pointer without argtypes
assert _STATX_SIZE == 256

# No argtypes: ctypes then converts nothing it has to check (every argument is an int,
# a bytes path or a buffer), which is most of a call's cost on the way of every ioctl
# that takes a file.
_statx = _libc.statx
_WANT = STATX_TYPE | STATX_MODE | STATX_INO | STATX_MNT_ID


def _unpacker(*names: str) -> struct.Struct:
    """A struct that reads `names` of _Statx, in order, at their offsets: one unpack
    instead of a ctypes attribute (and a Python int) per field."""
    fmt, at = "<", 0
    for name in names:
        field = getattr(_Statx, name)
        fmt += f"{field.offset - at}x" + {4: "I", 2: "H", 8: "Q"}[field.size]
        at = field.offset + field.size
    return struct.Struct(fmt)


_FIELDS = _unpacker("stx_mask", "stx_mode", "stx_ino", "stx_dev_major", "stx_dev_minor",
                    "stx_mnt_id")


class FileId(NamedTuple):
    dev: int  # as os.stat's st_dev
    ino: int
    mode: int
    mnt_id: int = -1  # the mount the file was opened through, as fdinfo says; -1: unknown


def _call(dirfd: int, path: bytes, flags: int) -> FileId:
    buf = _StatxBuffer()  # (create_string_buffer is Python: 4x slower, and this is per ioctl)
    if _statx(dirfd, path, flags | AT_STATX_DONT_SYNC, _WANT, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    mask, mode, ino, major, minor, mnt_id = _FIELDS.unpack_from(buf)
    return FileId(os.makedev(major, minor), ino, mode, mnt_id if mask & STATX_MNT_ID else -1)


def of_fd(fd: int) -> FileId:
    """The file behind one of our own fds."""
    return _call(fd, b"", AT_EMPTY_PATH)


def of_process_fd(pid: int | str, fd: int) -> FileId:
    """The file behind another process's (or thread's) fd, read through procfs."""
    return _call(-100, f"/proc/{pid}/fd/{fd}".encode(), 0)  # AT_FDCWD; the path is absolute
