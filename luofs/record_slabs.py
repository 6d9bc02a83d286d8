"""Small records in preserved memory, for handlers (a memfd's position, size and seals).

DOC: A slab allocator over KHO-preserved pages: records share slabs, are written at
`flush()` (before KHO is finalized) and read back in the next kernel by address.
Unhappy paths: no preserved memory left is MemoryError (the handler turns it into
ENOMEM); a record read in the next kernel is checked by its decoder, not here.
"""

from __future__ import annotations

from kho import Handover, PhysicalMemory
from kho.memory import pages_for


class RecordSlabs:
    """Preserved-memory services for handlers: store a small record, drop it, read it.

    Records (a memfd's is 48 bytes) share slabs of preserved pages, as kmalloc'ed
    objects share pages; their bytes are buffered and written with one pwrite per
    slab at `flush()`, which the reboot path calls before KHO is finalized. A freeze
    of 100,000 files must not cost 100,000 page allocations and writes.
    """

    SLAB_PAGES = 16
    ALIGN = 16

    def __init__(self, memory: PhysicalMemory, handover: Handover):
        self.memory = memory
        self.handover = handover
        self._slab: tuple[int, bytearray] | None = None  # (phys, buffered bytes)
        self._used = 0
        self._dirty: dict[int, bytearray] = {}  # slab phys → its bytes, until flushed
        self._live: dict[int, int] = {}  # slab phys → records still stored in it
        self._record_slab: dict[int, int] = {}  # record phys → its slab
        self._big: dict[int, int] = {}  # phys → pages, for records larger than a slab

    def store(self, blob: bytes) -> int:
        size = -(-len(blob) // self.ALIGN) * self.ALIGN
        slab_bytes = self.SLAB_PAGES * 4096
        if size > slab_bytes:
            npages = pages_for(len(blob))
            phys = self.memory.alloc_pages(npages)
            self.memory.write(phys, blob)
            self.handover.preserved.preserve(phys, npages * 4096)
            self._big[phys] = npages
            return phys
        if self._slab is None or self._used + size > slab_bytes:
            self._new_slab()
        slab_phys, buf = self._slab
        buf[self._used:self._used + len(blob)] = blob
        phys = slab_phys + self._used
        self._used += size
        self._live[slab_phys] += 1
        self._record_slab[phys] = slab_phys
        return phys

    def store_records(self, data: bytes, size: int) -> list[int]:
        """Records of `size` bytes each, back to back in `data`; their addresses in order."""
        if size <= 0 or len(data) % size:
            raise ValueError(f"{len(data)} bytes are not whole records of {size}")
        slab_bytes = self.SLAB_PAGES * 4096
        if size % self.ALIGN or size > slab_bytes:  # one at a time, as store() lays them out
            return [self.store(data[i:i + size]) for i in range(0, len(data), size)]
        count = len(data) // size
        out: list[int] = []
        i = 0
        while i < count:
            if self._slab is None or self._used + size > slab_bytes:
                self._new_slab()
            slab_phys, buf = self._slab
            fit = min(count - i, (slab_bytes - self._used) // size)
            start = self._used
            buf[start:start + fit * size] = data[i * size:(i + fit) * size]
            where = range(slab_phys + start, slab_phys + start + fit * size, size)
            out += where
            self._record_slab.update(dict.fromkeys(where, slab_phys))
            self._live[slab_phys] += fit
            self._used += fit * size
            i += fit
        return out

    def _new_slab(self) -> None:
        slab_bytes = self.SLAB_PAGES * 4096
        slab_phys = self.memory.alloc_pages(self.SLAB_PAGES)
        self.handover.preserved.preserve(slab_phys, slab_bytes)
        self._slab = (slab_phys, bytearray(slab_bytes))
        self._dirty[slab_phys] = self._slab[1]
        self._live[slab_phys] = 0
        self._used = 0

    def drop(self, phys: int) -> None:
        if phys in self._big:
            npages = self._big.pop(phys)
            self.handover.preserved.unpreserve(phys, npages * 4096)
            self.memory.free_pages(phys, npages)
            return
        slab_phys = self._record_slab.pop(phys, None)
        if slab_phys is None:
            return
        self._live[slab_phys] -= 1
        if self._live[slab_phys] == 0:
            del self._live[slab_phys]
            self._dirty.pop(slab_phys, None)
            if self._slab is not None and self._slab[0] == slab_phys:
                self._slab = None
            self.handover.preserved.unpreserve(slab_phys, self.SLAB_PAGES * 4096)
            self.memory.free_pages(slab_phys, self.SLAB_PAGES)

    def flush(self) -> None:
        for slab_phys, buf in self._dirty.items():
            self.memory.write(slab_phys, bytes(buf))
        self._dirty.clear()
        self._slab = None  # the next record starts a fresh slab, buffered anew

    def read(self, phys: int, n: int) -> bytes:
        slab_phys = self._record_slab.get(phys)
        if slab_phys is not None and slab_phys in self._dirty:
            off = phys - slab_phys
            return bytes(self._dirty[slab_phys][off:off + n])
        return self.memory.read(phys, n)
