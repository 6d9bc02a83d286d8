"""Emulated physical RAM: a sparse memfd plus a page allocator.

The machine process owns the RAM and outlives every kernel process, so RAM is a
memfd: it can be handed to the next kernel like any other file descriptor, and
preserved pages are never copied.  ``ftruncate`` makes it sparse, so a large
RAM costs nothing until pages are written.

Physical addresses are byte offsets into the memfd.  Page 0 is never handed
out, so 0 can mean "no address" in every on-wire pointer, as it does in the
kernel.
"""

import bisect
import errno
import os

from .errors import KhoFormatError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


def pages_for(nbytes: int) -> int:
    """Number of pages needed to hold ``nbytes`` (at least one)."""
    return max(1, -(-nbytes // PAGE_SIZE))


class OutOfPhysicalMemory(MemoryError):
    """No free range is large enough: the emulator's ENOMEM."""

    errno = errno.ENOMEM


class PhysicalAddressError(ValueError):
    """An access or allocator call names memory that does not exist or is misused."""


def _start_of(free_range):
    return free_range[0]


class PhysicalMemory:
    """Sparse RAM of ``size`` bytes with a first-fit page allocator.

    The free list holds sorted, disjoint, non-adjacent ``(first_pfn, end_pfn)``
    ranges.  First fit keeps long-lived allocations at low addresses, which
    keeps the free list short in the common allocate-at-boot pattern.
    """

    def __init__(self, size: int, name: str = "luofs-ram"):
        _check_size(size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._attach(fd, size)

    @classmethod
    def adopt(cls, fd: int, reserved_ranges=()) -> "PhysicalMemory":
        """Wrap RAM inherited from the previous kernel; takes ownership of ``fd``.

        ``reserved_ranges`` are ``(phys, nbytes)`` ranges already in use
        (preserved) that the allocator must never hand out.
        """
        size = os.fstat(fd).st_size
        _check_size(size)
        memory = cls.__new__(cls)
        memory._attach(fd, size)
        for phys, nbytes in reserved_ranges:
            memory.reserve(phys, nbytes)
        return memory

    def _attach(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._free = [(1, size >> PAGE_SHIFT)]  # page 0 stays reserved forever

    # -- allocator -----------------------------------------------------------------

    @property
    def free_page_count(self) -> int:
        return sum(end - start for start, end in self._free)

    def alloc_pages(self, n: int) -> int:
        """Allocate ``n`` contiguous pages; return the physical address of the first."""
        if n < 1:
            raise PhysicalAddressError(f"alloc_pages: cannot allocate {n} pages")
        for index, (start, end) in enumerate(self._free):
            if end - start >= n:
                if end - start == n:
                    del self._free[index]
                else:
                    self._free[index] = (start + n, end)
                return start << PAGE_SHIFT
        largest = max((end - start for start, end in self._free), default=0)
        raise OutOfPhysicalMemory(
            f"out of physical memory: cannot allocate {n} contiguous pages; "
            f"largest free range is {largest} pages, {self.free_page_count} of "
            f"{self.size >> PAGE_SHIFT} pages free")

    def free_pages(self, phys: int, n: int) -> None:
        """Return ``n`` pages at ``phys``, which must all be in use, to the allocator."""
        first = self._page_range(phys, n * PAGE_SIZE, "free_pages")
        end = first + n
        if first == 0:
            raise PhysicalAddressError("free_pages: page 0 is reserved and never freed")
        index = bisect.bisect_right(self._free, first, key=_start_of)
        before = self._free[index - 1] if index else None
        after = self._free[index] if index < len(self._free) else None
        if before and before[1] > first or after and after[0] < end:
            raise PhysicalAddressError(
                f"free_pages({phys:#x}, {n}): part of the range is already free")
        if before and before[1] == first:
            first = before[0]
            index -= 1
            del self._free[index]
        if after and after[0] == end:
            end = after[1]
            del self._free[index]
        self._free.insert(index, (first, end))

    def reserve(self, phys: int, nbytes: int) -> None:
        """Mark the pages touching ``[phys, phys + nbytes)`` as in use.

        Pages already in use stay in use, so reserving is idempotent: the new
        kernel may reserve every preserved block even if the machine already
        passed some of them to :meth:`adopt`.
        """
        if nbytes <= 0:
            return
        self._check_range(phys, nbytes, "reserve")
        first = phys >> PAGE_SHIFT
        end = (phys + nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT
        lo = bisect.bisect_right(self._free, first, key=_start_of)
        if lo and self._free[lo - 1][1] > first:
            lo -= 1
        hi = bisect.bisect_left(self._free, end, key=_start_of)
        remnants = []
        if lo < hi:
            if self._free[lo][0] < first:
                remnants.append((self._free[lo][0], first))
            if self._free[hi - 1][1] > end:
                remnants.append((end, self._free[hi - 1][1]))
        self._free[lo:hi] = remnants

    # -- access --------------------------------------------------------------------

    def contains(self, phys: int, nbytes: int) -> bool:
        """True if ``[phys, phys + nbytes)`` lies inside RAM."""
        return 0 <= phys and 0 <= nbytes and phys + nbytes <= self.size

    def read(self, phys: int, n: int) -> bytes:
        self._check_range(phys, n, "read")
        data = os.pread(self.fd, n, phys)
        if len(data) != n:
            raise OSError(errno.EIO, f"short read of RAM at {phys:#x}: {len(data)} of {n} bytes")
        return data

    def write(self, phys: int, data) -> None:
        self._check_range(phys, len(data), "write")
        written = os.pwrite(self.fd, data, phys)
        if written != len(data):
            raise OSError(errno.EIO,
                          f"short write to RAM at {phys:#x}: {written} of {len(data)} bytes")

    def _check_range(self, phys: int, nbytes: int, what: str) -> None:
        if not self.contains(phys, nbytes):
            raise PhysicalAddressError(
                f"{what}: {nbytes} bytes at {phys:#x} lie outside physical memory "
                f"[0, {self.size:#x})")

    def _page_range(self, phys: int, nbytes: int, what: str) -> int:
        if phys % PAGE_SIZE or nbytes <= 0:
            raise PhysicalAddressError(
                f"{what}: {phys:#x} (+{nbytes:#x}) is not a non-empty page-aligned range")
        self._check_range(phys, nbytes, what)
        return phys >> PAGE_SHIFT

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f"<PhysicalMemory fd={self.fd} size={self.size:#x} "
                f"free_pages={self.free_page_count}>")


def _check_size(size: int) -> None:
    if size < 2 * PAGE_SIZE or size % PAGE_SIZE:
        raise PhysicalAddressError(
            f"RAM size {size:#x} must be a multiple of {PAGE_SIZE} and at least two pages")


def read_handover(memory: PhysicalMemory, phys: int, nbytes: int, what: str) -> bytes:
    """Read data the previous kernel left behind, as a format check.

    A pointer that leads outside RAM is corrupt handover data, not a caller
    bug, so it raises :class:`KhoFormatError` naming ``what`` it was.
    """
    if phys == 0:
        raise KhoFormatError(f"{what}: address is 0 (none)")
    if not memory.contains(phys, nbytes):
        raise KhoFormatError(
            f"{what}: {nbytes} bytes at {phys:#x} lie outside physical memory "
            f"(size {memory.size:#x})")
    return memory.read(phys, nbytes)
