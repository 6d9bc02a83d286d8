"""The memfd file handler (spec/uapi.md §15, `memfd-v2`).

It accepts unlinked shmem files: memfd_create() without MFD_HUGETLB and O_TMPFILE
or unlinked files on tmpfs. LUO keeps its own reference to the caller's open file
description, so the caller may close its fd and the file position it leaves is
the one carried.
"""

from __future__ import annotations

import fcntl
import os
import stat

from ..core.errors import LuoError
from ..fdutil import TMPFS_MAGIC, OwnedFile, fstatfs_type
from ..uapi import errnos

COMPATIBLE = "memfd-v2"
PAGE_SIZE = 4096
KNOWN_SEALS = (fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
               | fcntl.F_SEAL_WRITE | 0x10 | 0x20)  # FUTURE_WRITE, EXEC
MAX_PAGES = 2**32 - 1


def _seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return 0  # O_TMPFILE files do not support sealing


class MemfdHandler:
    compatible = COMPATIBLE

    def __init__(self, handed_over: dict[int, OwnedFile] | None = None):
        # New kernel: data handle → the file the previous kernel handed over.
        self._handed_over = dict(handed_over or {})

    def can_preserve(self, file: OwnedFile) -> bool:
        if file.is_fuse:  # never stat a FUSE file from the daemon (it may be our own mount)
            return False
        st = os.fstat(file.fd)
        return (stat.S_ISREG(st.st_mode) and st.st_nlink == 0
                and fstatfs_type(file.fd) == TMPFS_MAGIC)

    def get_id(self, file: OwnedFile):
        st = os.fstat(file.fd)
        return (st.st_dev, st.st_ino)

    def preserve(self, file: OwnedFile) -> int:
        seals = _seals(file.fd)
        if seals & ~KNOWN_SEALS:
            raise LuoError(errnos.EOPNOTSUPP, f"memfd has unknown seals {seals:#x}")
        size = os.fstat(file.fd).st_size
        if (size + PAGE_SIZE - 1) // PAGE_SIZE > MAX_PAGES:
            raise LuoError(errnos.EFBIG, f"memfd of {size} bytes exceeds 2^32-1 pages")
        if size:
            try:  # populate every hole: preserved memory is fully allocated (§15)
                os.posix_fallocate(file.fd, 0, size)
            except OSError as e:
                if e.errno == errnos.ENOMEM or e.errno == 28:  # ENOSPC from tmpfs = no memory
                    raise LuoError(errnos.ENOMEM, "cannot allocate the memfd's pages") from None
                if e.errno != errnos.EPERM:  # sealed against writes: its pages already exist
                    raise LuoError(e.errno, f"fallocate failed: {e.strerror}") from None
        return 0

    def unpreserve(self, file: OwnedFile, data: int) -> None:
        pass  # nothing is pinned beyond LUO's reference, which the core drops

    def freeze(self, file: OwnedFile, data: int) -> int:
        return data

    def unfreeze(self, file: OwnedFile, data: int) -> None:
        pass

    def retrieve(self, data: int) -> OwnedFile:
        file = self._handed_over.pop(data, None)
        if file is None:
            raise LuoError(errnos.ENOENT, f"no handed-over memfd for handle {data:#x}")
        return file

    def can_finish(self, file, data: int) -> bool:
        return True

    def finish(self, file, data: int, retrieved: bool) -> None:
        if not retrieved:  # never retrieved: its memory is freed now
            stale = self._handed_over.pop(data, None)
            if stale is not None:
                stale.close()
