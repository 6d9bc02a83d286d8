"""A small IOMMU: two-level I/O page tables in emulated RAM and the walker that reads them.

Format (one 4 KiB page per table, 512 little-endian u64 entries each)::

    IOVA bits  29..21  index into the root table  → entry = L1 table phys | PRESENT
               20..12  index into the L1 table    → entry = page phys | PRESENT | WRITE
               11..0   offset in the page

so a domain spans 1 GiB of IOVA. The kernel side (:class:`IoPageTable`) builds the
tables with pages from its allocator; the machine side (:func:`translate`) walks
them from RAM on every DMA access — there is no IOTLB — so the tables really must
survive a kexec for a preserved device to keep working. A failed walk is an
:class:`IommuFault`; the device that hit it stops.

Shared: the machine walks the tables, a kernel's DMA driver builds them.

Unhappy paths: :func:`translate` raises :class:`IommuFault` (outside the IOVA
space, no root or L1 table, not mapped, read-only, a table or page outside RAM);
:meth:`IoPageTable.create` refuses a range outside the IOVA space, and ``map`` one
outside its tables, with ValueError; ``create`` frees what it allocated if it fails.
"""

from __future__ import annotations

import struct

from .ram import PAGE_SHIFT, PAGE_SIZE

LEVEL_BITS = 9
ENTRIES = 1 << LEVEL_BITS
IOVA_BITS = PAGE_SHIFT + 2 * LEVEL_BITS
IOVA_LIMIT = 1 << IOVA_BITS
PTE_PRESENT = 1 << 0
PTE_WRITE = 1 << 1
PTE_ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)
_PTE = struct.Struct("<Q")


class IommuFault(Exception):
    """A DMA access the tables do not allow: unmapped, read-only or out of range."""

    def __init__(self, iova: int, reason: str):
        super().__init__(f"IOMMU fault at IOVA {iova:#x}: {reason}")
        self.iova = iova
        self.reason = reason


def _indexes(iova: int) -> tuple[int, int]:
    return (iova >> (PAGE_SHIFT + LEVEL_BITS)) & (ENTRIES - 1), (iova >> PAGE_SHIFT) & (ENTRIES - 1)


def translate(ram, root: int, iova: int, write: bool = True) -> int:
    """Walk the tables at ``root`` in ``ram`` (anything with ``read``/``contains``)."""
    if not 0 <= iova < IOVA_LIMIT:
        raise IommuFault(iova, f"outside the {IOVA_BITS}-bit IOVA space")
    if root == 0 or root % PAGE_SIZE or not ram.contains(root, PAGE_SIZE):
        raise IommuFault(iova, f"no valid root table (root {root:#x})")
    top, low = _indexes(iova)
    entry = _PTE.unpack(ram.read(root + 8 * top, 8))[0]
    if not entry & PTE_PRESENT:
        raise IommuFault(iova, "no L1 table (root entry not present)")
    table = entry & PTE_ADDR_MASK
    if not ram.contains(table, PAGE_SIZE):
        raise IommuFault(iova, f"L1 table {table:#x} lies outside RAM")
    pte = _PTE.unpack(ram.read(table + 8 * low, 8))[0]
    if not pte & PTE_PRESENT:
        raise IommuFault(iova, "page not mapped")
    if write and not pte & PTE_WRITE:
        raise IommuFault(iova, "page is mapped read-only")
    page = pte & PTE_ADDR_MASK
    if not ram.contains(page, PAGE_SIZE):
        raise IommuFault(iova, f"mapped page {page:#x} lies outside RAM")
    return page | (iova & (PAGE_SIZE - 1))


class IoPageTable:
    """One device's I/O page tables, allocated contiguously: the root page, then L1 pages.

    Contiguous so that the whole structure is one ``(phys, pages)`` range to
    preserve and to hand over.
    """

    def __init__(self, memory, phys: int, pages: int, iova: int):
        self.memory = memory
        self.phys = phys      # first page: the root table
        self.pages = pages    # root + L1 tables
        self.iova = iova & ~((PAGE_SIZE << LEVEL_BITS) - 1)  # first IOVA the L1 tables cover

    @property
    def root(self) -> int:
        return self.phys

    @property
    def nbytes(self) -> int:
        return self.pages * PAGE_SIZE

    @classmethod
    def create(cls, memory, iova: int, npages: int) -> "IoPageTable":
        """Tables able to map ``npages`` pages from ``iova`` (nothing is mapped yet)."""
        if iova % PAGE_SIZE or npages < 1 or iova + npages * PAGE_SIZE > IOVA_LIMIT:
            raise ValueError(f"cannot map {npages} pages at IOVA {iova:#x} in a "
                             f"{IOVA_BITS}-bit space")
        first, _ = _indexes(iova)
        last, _ = _indexes(iova + (npages - 1) * PAGE_SIZE)
        pages = 1 + last - first + 1
        phys = memory.alloc_pages(pages)
        try:
            memory.write(phys, bytes(pages * PAGE_SIZE))
            root = bytearray(PAGE_SIZE)
            for n, top in enumerate(range(first, last + 1)):
                _PTE.pack_into(root, 8 * top, (phys + (1 + n) * PAGE_SIZE) | PTE_PRESENT)
            memory.write(phys, bytes(root))
        except BaseException:
            memory.free_pages(phys, pages)
            raise
        return cls(memory, phys, pages, iova)

    def _l1_entry(self, iova: int) -> int:
        top, low = _indexes(iova)
        first, _ = _indexes(self.iova)
        table = top - first
        if not 0 <= table < self.pages - 1 or iova < self.iova:
            raise ValueError(f"IOVA {iova:#x} is outside what these tables cover")
        return self.phys + (1 + table) * PAGE_SIZE + 8 * low

    def map(self, iova: int, phys: int, npages: int, write: bool = True) -> None:
        flags = PTE_PRESENT | (PTE_WRITE if write else 0)
        for n in range(npages):
            self.memory.write(self._l1_entry(iova + n * PAGE_SIZE),
                              _PTE.pack((phys + n * PAGE_SIZE) | flags))

    def unmap(self, iova: int, npages: int = 1) -> None:
        for n in range(npages):
            self.memory.write(self._l1_entry(iova + n * PAGE_SIZE), bytes(8))

    def free(self) -> None:
        self.memory.free_pages(self.phys, self.pages)
