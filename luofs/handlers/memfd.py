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

from kho import KhoFormatError
from kho.memfd_record import MEMFD_RECORD as _RECORD, MEMFD_RECORD_SIZE, memfd_record_size

from .. import trace
from ..core.errors import LuoError
from ..core.faults import NONE, Faults
from ..fdutil import TMPFS_MAGIC, OwnedFile, fstatfs_type
from ..filestore import FileStore
from ..keeper import RECORD as KEEPER_RECORD
from ..uapi import errnos

COMPATIBLE = "memfd-v2"
PAGE_SIZE = 4096
KNOWN_SEALS = (fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
               | fcntl.F_SEAL_WRITE | 0x10 | 0x20)  # FUTURE_WRITE, EXEC
MAX_PAGES = 2**32 - 1
assert _RECORD.pack(1, 2, 3, 0, 0, 0, 0, 0, 0).startswith(KEEPER_RECORD.pack(1, 2, 3))
# The kernel carries O_RDWR|O_LARGEFILE whatever the preserved file's flags were.
_FLAGS = os.O_RDWR | 0o100000
PROGRESS_STEP = 1024  # files between two progress reports of a freeze


def _seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return 0  # O_TMPFILE files do not support sealing


# Marks a memfd LUO holds preserved, for the shim and the seccomp supervisor: while it
# is there, ftruncate to another size and fallocate fail with EPERM (§15), which only a
# kernel hook could enforce for every caller. Files parked in keepers are not marked (the
# kernel holds no fd of theirs to clear it with): the rule is not enforced for them.
FROZEN_XATTR = "user.luo.frozen"


def mark_frozen(file: OwnedFile, frozen: bool) -> None:
    if file.parked is not None or file.fd < 0 or file.closed:
        return  # (a closed file's number may name another file by now)
    try:
        if frozen:
            os.setxattr(file.fd, FROZEN_XATTR, b"1")
        else:
            os.removexattr(file.fd, FROZEN_XATTR)
    except OSError:
        pass  # no user xattrs here, or no mark: the rule is then not enforced


def _read_write(file: OwnedFile) -> None:
    """The kernel hands back a new O_RDWR file whatever the preserved one's access mode:
    a file preserved read-only or write-only is reopened read-write (a new open file
    description, at the same position)."""
    if fcntl.fcntl(file.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:
        return
    fd = os.open(f"/proc/self/fd/{file.fd}", os.O_RDWR | os.O_CLOEXEC)
    os.lseek(fd, os.lseek(file.fd, 0, os.SEEK_CUR), os.SEEK_SET)
    os.close(file.fd)
    file.fd = fd


def _fully_allocated(fd: int, size: int) -> bool:
    """Every page of the file exists: tmpfs counts them in st_blocks, so this costs O(1)
    where fallocate() would walk every page (~0.6 s per GiB already allocated)."""
    pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
    return os.fstat(fd).st_blocks * 512 >= pages * PAGE_SIZE


class MemfdHandler:
    """`kho` stores and reads records in preserved memory (store(bytes) -> phys,
    drop(phys), read(phys, n)); without it (unit tests) freeze records nothing."""

    compatible = COMPATIBLE

    def __init__(self, kho=None, faults: Faults = NONE, store=None, memory: int | None = None):
        self._kho = kho
        self._faults = faults
        self._store = store  # where preserved files live (luofs/filestore.py)
        # The machine's memory (`luofs boot --memory`): preserved pages are pinned, and
        # no machine pins more than it has. None: no limit (unit tests).
        self._memory = memory
        self.pinned = 0

    def can_preserve(self, file: OwnedFile) -> bool:
        if file.is_fuse:  # never stat a FUSE file from the daemon (it may be our own mount)
            return False
        st = os.fstat(file.fd)
        file.ident = (st.st_dev, st.st_ino)
        return (stat.S_ISREG(st.st_mode) and st.st_nlink == 0
                and fstatfs_type(file.fd) == TMPFS_MAGIC)

    def get_id(self, file: OwnedFile):
        if file.ident is None:
            st = os.fstat(file.fd)
            file.ident = (st.st_dev, st.st_ino)
        return file.ident

    def preserve(self, file: OwnedFile) -> int:
        self._faults.check("memfd.preserve")
        self._faults.check("crash.preserve")
        seals = _seals(file.fd)
        if seals & ~KNOWN_SEALS:
            raise LuoError(errnos.EOPNOTSUPP, f"memfd has unknown seals {seals:#x}")
        size = os.fstat(file.fd).st_size
        if (size + PAGE_SIZE - 1) // PAGE_SIZE > MAX_PAGES:
            raise LuoError(errnos.EFBIG, f"memfd of {size} bytes exceeds 2^32-1 pages")
        pages = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        self._pin(file, pages)  # before a single page is allocated
        try:
            if size:
                self._populate(file.fd, size)
            if self._store is not None:
                try:
                    self._store.hold(file)
                except OSError as e:
                    raise LuoError(errnos.ENOMEM, str(e)) from None
        except BaseException:
            self.unpreserve(file, 0)
            raise
        mark_frozen(file, True)
        return 0

    def _pin(self, file: OwnedFile, nbytes: int) -> None:
        """Count the file's pages against the machine's memory, as the kernel pins them:
        ENOMEM, with nothing allocated, if they do not fit beside what is pinned."""
        if self._memory is not None and self.pinned + nbytes > self._memory:
            raise LuoError(errnos.ENOMEM, f"memfd of {nbytes} bytes does not fit: "
                                          f"{self.pinned} of the machine's {self._memory} "
                                          "bytes are pinned by preserved files")
        self.pinned += nbytes
        file.pinned = nbytes

    @staticmethod
    def _populate(fd: int, size: int) -> None:
        if _fully_allocated(fd, size):  # nothing to allocate: not a walk over every page
            return
        try:  # populate every hole: preserved memory is fully allocated (§15)
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                # The kernel pins pages whatever the access mode; fallocate needs a
                # writable file, so it goes through a read-write open of the same inode.
                rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.posix_fallocate(rw, 0, size)
                finally:
                    os.close(rw)
            else:
                os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno == errnos.ENOMEM or e.errno == 28:  # ENOSPC from tmpfs = no memory
                raise LuoError(errnos.ENOMEM, "cannot allocate the memfd's pages") from None
            if e.errno != errnos.EPERM:  # sealed against writes: its pages already exist
                raise LuoError(e.errno, f"fallocate failed: {e.strerror}") from None

    def unpreserve(self, file: OwnedFile, data: int) -> None:
        self.pinned -= file.pinned  # LUO's reference itself the core drops
        file.pinned = 0
        mark_frozen(file, False)

    def freeze(self, file: OwnedFile, data: int) -> int:
        """Record position, size and seals as of now; the record's address is the handle."""
        self._faults.check("memfd.freeze")
        self._faults.check("crash.freeze")
        if self._kho is None:
            return data
        if file.parked is not None:
            try:
                pos, size, seals = file.vault.record(file.parked)
            except OSError as e:
                raise LuoError(errnos.EIO, f"cannot read a parked file: {e}") from None
        else:
            fd = file.fd
            pos, size, seals = os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd).st_size, _seals(fd)
        record = _RECORD.pack(pos, size, seals, _FLAGS, 0, 0, 0, 0, 0)
        try:
            return self._kho.store(record)
        except MemoryError:
            raise LuoError(errnos.ENOMEM, "no preserved memory left for a memfd record") from None

    def freeze_many(self, entries) -> list[int]:
        """freeze() for many files (entries with `file` and `data`): parked ones are read
        in one request per keeper."""
        self._faults.check("memfd.freeze")
        self._faults.check("crash.freeze")
        if self._kho is None:
            return [entry.data for entry in entries]
        fds, runs = FileStore.split(entry.file for entry in entries)
        direct: list[bytes] = []
        total, done = len(entries), [0]

        def advance(files: int) -> None:
            done[0] += files
            trace.progress("freezing files", done[0], total)

        def read_direct() -> None:  # while the keepers read theirs
            with trace.span("read held files", "memfd", files=len(fds)):
                for at in range(0, len(fds), PROGRESS_STEP):
                    chunk = fds[at:at + PROGRESS_STEP]
                    for fd in chunk:
                        direct.append(_RECORD.pack(os.lseek(fd, 0, os.SEEK_CUR),
                                                   os.fstat(fd).st_size, _seals(fd), _FLAGS,
                                                   0, 0, 0, 0, 0))
                    advance(len(chunk))

        # A keeper's record is this one's first 20 bytes (position, size, seals): it adds
        # the rest, so parked records arrive whole, a run at a time.
        tail = _RECORD.pack(0, 0, 0, _FLAGS, 0, 0, 0, 0, 0)[KEEPER_RECORD.size:]
        try:
            blobs = (self._store.records([run[1:] for run in runs], tail, read_direct, advance)
                     if runs else [])
        except OSError as e:  # a keeper is gone: its files cannot be carried
            raise LuoError(errnos.EIO, f"cannot read parked files: {e}") from None
        if not runs:
            read_direct()
        chunks: list[bytes] = []
        at = taken = 0  # image positions done; direct records used
        for run, blob in zip(runs, blobs):
            chunks += direct[taken:taken + run.first - at]
            taken += run.first - at
            chunks.append(blob)
            at = run.first + run.count
        chunks += direct[taken:]
        try:
            with trace.span("store records in preserved memory", "memfd", files=total):
                return self._kho.store_records(b"".join(chunks), _RECORD.size)
        except MemoryError:
            raise LuoError(errnos.ENOMEM, "no preserved memory left for memfd records") from None

    def unfreeze(self, file: OwnedFile, data: int) -> None:
        if self._kho is not None and data:
            self._kho.drop(data)

    def retrieve(self, data: int, private: OwnedFile | None) -> OwnedFile:
        """`private`: the file the previous kernel handed over for this record."""
        file = private
        if file is None:
            raise LuoError(errnos.ENOENT, f"no handed-over memfd for handle {data:#x}")
        if file.parked is not None:
            try:
                file.vault.unpark(file)
            except OSError as e:
                raise LuoError(errnos.EIO, f"memfd at {data:#x}: its keeper failed: {e}") from None
        if self._kho is not None:
            try:
                recorded = memfd_record_size(self._kho.read(data, MEMFD_RECORD_SIZE))
            except KhoFormatError as e:
                file.close()
                raise LuoError(errnos.EIO, f"memfd record at {data:#x}: {e}") from None
            size = os.fstat(file.fd).st_size
            if size != recorded:
                file.close()
                raise LuoError(errnos.EIO, f"memfd at {data:#x} is {size} bytes, "
                                           f"its record says {recorded}")
        _read_write(file)
        mark_frozen(file, False)  # the kernel's retrieved file is a new, unfrozen one
        return file

    def can_finish(self, file, data: int) -> bool:
        return True

    def finish(self, file, data: int, retrieved: bool, private: OwnedFile | None) -> None:
        if not retrieved and private is not None:  # never retrieved: freed now
            if private.parked is None:
                mark_frozen(private, False)
            private.close()
