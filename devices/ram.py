"""The machine's bus view of RAM: what a device's DMA reads and writes.

The kernel allocates RAM (kho.PhysicalMemory); devices only access it, through
the same memfd, so there is no allocator here. A physical address is a byte
offset into the memfd, as everywhere in luofs.

Half: hardware (the machine process). Unhappy paths: an access outside the memfd
is ValueError, a short read or write (the memfd shrank under us) OSError, both to
the caller (a DMA's IOMMU walk checks its pages against RAM first).

The page size is the machine's, defined here rather than taken from ``kho.memory``
so the machine process does not import KHO (a test pins the two equal).
"""

from __future__ import annotations

import os

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


class RamView:
    """Reads and writes of the RAM memfd; takes ownership of ``fd``."""

    def __init__(self, fd: int):
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def contains(self, phys: int, nbytes: int) -> bool:
        return 0 <= phys and 0 <= nbytes and phys + nbytes <= self.size

    def read(self, phys: int, n: int) -> bytes:
        self._check(phys, n)
        data = os.pread(self.fd, n, phys)
        if len(data) != n:
            raise OSError(f"short DMA read at {phys:#x}: {len(data)} of {n} bytes")
        return data

    def write(self, phys: int, data) -> None:
        self._check(phys, len(data))
        if os.pwrite(self.fd, data, phys) != len(data):
            raise OSError(f"short DMA write at {phys:#x}")

    def _check(self, phys: int, n: int) -> None:
        if not self.contains(phys, n):
            raise ValueError(f"{n} bytes at {phys:#x} lie outside RAM [0, {self.size:#x})")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
