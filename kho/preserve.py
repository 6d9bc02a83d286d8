"""Which physical memory survives the kexec, tracked as KHO does (kho.md §4).

A preserved range is split into naturally aligned power-of-two blocks; each
block is one bit in a sparse per-order bitmap.  Here a block is kept as the
pair (order, pfn >> order) in a set per order, which is exactly the
information the bitmaps carry; :mod:`kho.mem_map` turns the sets into the
kernel's chunk list and back.
"""

import errno
from typing import Iterator, NamedTuple

from .mem_map import MAX_ORDER, read_mem_map, write_mem_map
from .memory import PAGE_SHIFT, PAGE_SIZE, PhysicalAddressError


class Block(NamedTuple):
    """One preserved block: ``PAGE_SIZE << order`` bytes at ``phys``."""

    phys: int
    order: int

    @property
    def size(self) -> int:
        return PAGE_SIZE << self.order


def split_range(phys: int, nbytes: int) -> Iterator[Block]:
    """Split a page-aligned range the way ``kho_preserve_phys`` does.

    Each block's order is the smaller of the trailing zero bits of its pfn and
    floor(log2(pages left)), so blocks are naturally aligned and as large as
    possible.
    """
    if phys < 0 or nbytes < 0 or phys % PAGE_SIZE or nbytes % PAGE_SIZE:
        raise PhysicalAddressError(
            f"preserve: {phys:#x} (+{nbytes:#x}) is not a page-aligned range")
    pfn = phys >> PAGE_SHIFT
    end = pfn + (nbytes >> PAGE_SHIFT)
    while pfn < end:
        order = (end - pfn).bit_length() - 1
        if pfn:
            order = min(order, (pfn & -pfn).bit_length() - 1)
        yield Block(pfn << PAGE_SHIFT, order)
        pfn += 1 << order


class PreservedMemory:
    """The set of preserved blocks of one kernel.

    Like the kernel's bitmaps, preserving a block that is already preserved
    changes nothing.  Unlike the kernel, unpreserving a block that is not
    preserved is an error: the kernel silently ignores it, which hides the
    caller's bookkeeping bug until the next kernel finds memory missing.
    Once :meth:`freeze` was called (KHO finalized) both raise EBUSY, because
    the serialized map would no longer match.
    """

    def __init__(self):
        self._orders: dict[int, set[int]] = {}
        self.frozen = False

    # -- changes -------------------------------------------------------------------

    def preserve(self, phys: int, nbytes: int) -> None:
        """Preserve the page-aligned range ``[phys, phys + nbytes)``."""
        self._check_not_frozen("preserve")
        for block in split_range(phys, nbytes):
            self._add(block)

    def unpreserve(self, phys: int, nbytes: int) -> None:
        """Undo :meth:`preserve` of exactly the same range (all or nothing)."""
        self._remove(list(split_range(phys, nbytes)), "unpreserve")

    def preserve_folio(self, phys: int, order: int) -> None:
        """Preserve one naturally aligned block of ``PAGE_SIZE << order`` bytes."""
        self._check_not_frozen("preserve_folio")
        self._add(_folio(phys, order))

    def unpreserve_folio(self, phys: int, order: int) -> None:
        self._remove([_folio(phys, order)], "unpreserve_folio")

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    def _add(self, block: Block) -> None:
        self._orders.setdefault(block.order, set()).add(block.phys >> (block.order + PAGE_SHIFT))

    def _remove(self, blocks: list, what: str) -> None:
        self._check_not_frozen(what)
        for block in blocks:
            if block not in self:
                raise PhysicalAddressError(
                    f"{what}: order-{block.order} block at {block.phys:#x} is not preserved")
        for block in blocks:
            indexes = self._orders[block.order]
            indexes.discard(block.phys >> (block.order + PAGE_SHIFT))
            if not indexes:
                del self._orders[block.order]

    def _check_not_frozen(self, what: str) -> None:
        if self.frozen:
            raise OSError(errno.EBUSY, f"{what}: KHO is finalized; preserved memory is frozen")

    # -- queries -------------------------------------------------------------------

    def __contains__(self, block: Block) -> bool:
        return block.phys >> (block.order + PAGE_SHIFT) in self._orders.get(block.order, ())

    def __iter__(self) -> Iterator[Block]:
        """Blocks in ascending address order (then ascending order)."""
        blocks = [Block(index << (order + PAGE_SHIFT), order)
                  for order, indexes in self._orders.items() for index in indexes]
        return iter(sorted(blocks))

    def __len__(self) -> int:
        return sum(len(indexes) for indexes in self._orders.values())

    def __eq__(self, other) -> bool:
        if not isinstance(other, PreservedMemory):
            return NotImplemented
        return self._orders == other._orders

    def covers(self, phys: int, nbytes: int) -> bool:
        """True if every page of ``[phys, phys + nbytes)`` lies in some preserved block."""
        first = phys >> PAGE_SHIFT
        end = (phys + nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT
        pfn = first
        while pfn < end:
            for order, indexes in self._orders.items():
                if pfn >> order in indexes:
                    pfn = ((pfn >> order) + 1) << order
                    break
            else:
                return False
        return True

    # -- serialized form -----------------------------------------------------------

    def serialize(self, memory) -> int:
        """Write the chunk list into fresh pages of ``memory``; return its address.

        Returns 0 (no map) when nothing is preserved, as the kernel does.
        """
        return write_mem_map(memory, self._orders)

    @classmethod
    def deserialize(cls, memory, phys: int) -> "PreservedMemory":
        """Read and validate the chunk list at ``phys`` (0 means nothing preserved)."""
        preserved = cls()
        preserved._orders = read_mem_map(memory, phys)
        return preserved

    def __repr__(self):
        return f"<PreservedMemory blocks={len(self)} frozen={self.frozen}>"


def _folio(phys: int, order: int) -> Block:
    if not 0 <= order <= MAX_ORDER:
        raise PhysicalAddressError(f"folio order {order} is outside 0..{MAX_ORDER}")
    if phys < 0 or phys % (PAGE_SIZE << order):
        raise PhysicalAddressError(
            f"folio at {phys:#x} is not aligned to its order-{order} size {PAGE_SIZE << order:#x}")
    return Block(phys, order)
