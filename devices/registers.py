"""A DMA engine's register page ("BAR 0"): a one-page memfd both sides can reach.

The machine's device model owns the page; a driver gets the memfd at
``device-attach`` and reads and writes registers with pread/pwrite, as it would
with MMIO. Registers are little-endian u64s. Who writes what:

* the driver: ``ring_iova``, ``ring_entries``, ``iommu_root`` (before start) and
  ``tail`` (the doorbell: how far it has consumed);
* the device: ``id``, ``status``, ``head`` (how far it has written), ``epoch``
  (bumped by every reset), ``next_seq``, ``fault_iova``.

``head`` and ``tail`` run free (they never wrap); the slot is ``index % entries``
and ``head - tail`` records are waiting. A u64 read while the other side
writes it could tear, so :meth:`Bar.read` reads until two reads agree.

Shared: the machine's engine and a kernel's driver both use the page. Unhappy paths:
an unknown register name is KeyError (a programming error); a failed
pread/pwrite (the memfd was closed) is OSError, to the caller.
"""

from __future__ import annotations

import os
import struct

BAR_SIZE = 4096
DMA_ENGINE_ID = 0x4C55_0D4A  # "LU", DMA

# Status bits.
STATUS_RUNNING = 1 << 0
STATUS_FAULT = 1 << 1
STATUS_FULL = 1 << 2
STATUS_BLOCKED = 1 << 3

#: The registers in page order, each a little-endian u64. Plain :mod:`struct`, not
#: construct: the machine process imports this and must stay small (a test checks the
#: layout against a construct definition).
REGISTER_NAMES = ("id", "status", "ring_iova", "ring_entries", "iommu_root", "head", "tail",
                  "epoch", "next_seq", "fault_iova")
REGISTERS = struct.Struct("<" + "Q" * len(REGISTER_NAMES))
OFFSETS = {name: index * 8 for index, name in enumerate(REGISTER_NAMES)}
_U64 = struct.Struct("<Q")


class Bar:
    """Register access through a memfd; ``Bar.create`` makes a fresh zeroed page."""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def create(cls, label: str) -> "Bar":
        fd = os.memfd_create(f"luofs-bar-{label}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, BAR_SIZE)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def read(self, name: str) -> int:
        offset = OFFSETS[name]
        value = _U64.unpack(os.pread(self.fd, 8, offset))[0]
        while True:
            again = _U64.unpack(os.pread(self.fd, 8, offset))[0]
            if again == value:
                return value
            value = again

    def write(self, name: str, value: int) -> None:
        os.pwrite(self.fd, _U64.pack(value), OFFSETS[name])

    def snapshot(self) -> dict:
        """All registers at once (not atomic as a whole; each value may be a little stale)."""
        values = REGISTERS.unpack(os.pread(self.fd, REGISTERS.size, 0))
        return dict(zip(OFFSETS, values))

    def clear(self) -> None:
        os.pwrite(self.fd, bytes(BAR_SIZE), 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
