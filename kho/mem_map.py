"""The preserved-memory map: KHO's linked list of bitmap chunks (kho.md §4).

Layout as in the 6.19-era kernel: 4 KiB chunks, each describing one order,
pointing to one-page bitmaps of 32768 bits.  Bit ``b`` of the bitmap whose
entry starts at ``S`` for order ``o`` stands for the block at
``S + (b << (o + 12))``.  Chunks and bitmaps are not preserved themselves: the
new kernel reads them before it allocates anything, then they are free memory.
"""

from typing import Iterator

from construct import (Array, Bytes, Default, Int32ul, Int64ul, Rebuild, Struct, Terminated,
                       this)

from .errors import KhoFormatError
from .memory import PAGE_SHIFT, PAGE_SIZE, read_handover

#: Highest order a 64-bit physical address can express with 4 KiB pages.
MAX_ORDER = 63 - PAGE_SHIFT
#: Bits per bitmap: one page of bits since the 6.19 era (512 bytes in 6.16).
BITMAP_BITS = 8 * PAGE_SIZE

# struct khoser_mem_bitmap_ptr
KhoserMemBitmapPtr = Struct(
    "phys_start" / Int64ul,  # address of bit 0 of the bitmap
    "bitmap" / Int64ul,      # physical address of the bitmap page
)

# struct khoser_mem_chunk_hdr
KhoserMemChunkHdr = Struct(
    "next" / Int64ul,        # physical address of the next chunk, 0 = last
    "order" / Int32ul,
    "num_elms" / Int32ul,    # used entries of bitmaps[]
)

_ENTRY_SIZE = KhoserMemBitmapPtr.sizeof()
#: Entries per chunk: what fits in a page after the header (255).
CHUNK_SLOTS = (PAGE_SIZE - KhoserMemChunkHdr.sizeof()) // _ENTRY_SIZE


def _unused_len(this) -> int:
    return (CHUNK_SLOTS - this.hdr.num_elms) * _ENTRY_SIZE


# struct khoser_mem_chunk: header plus a fixed array of CHUNK_SLOTS entries.
KhoserMemChunk = Struct(
    "hdr" / Rebuild(KhoserMemChunkHdr, lambda this: dict(this.hdr, num_elms=len(this.bitmaps))),
    "bitmaps" / Array(this.hdr.num_elms, KhoserMemBitmapPtr),
    # The entries past num_elms: not a reserved field but the unused tail of
    # the fixed array, zero as the kernel leaves it; kept on parse so that a
    # parsed chunk rebuilds to the same bytes.
    "_unused" / Default(Bytes(_unused_len), lambda this: bytes(_unused_len(this))),
    Terminated,
)


def write_mem_map(memory, orders: dict[int, set[int]]) -> int:
    """Serialize ``{order: {pfn >> order}}`` into new pages; return the first chunk.

    Chunks come first, in ascending order and ascending bitmap address as the
    kernel walks its xarrays, then the bitmaps; all go in one allocation and
    one write.  Returns 0 when there is nothing to describe.
    """
    bitmaps = []  # (order, phys_start, bitmap bytes)
    for order in sorted(orders):
        words: dict[int, int] = {}
        for index in orders[order]:
            number, bit = divmod(index, BITMAP_BITS)
            words[number] = words.get(number, 0) | (1 << bit)
        for number in sorted(words):
            bitmaps.append((order, (number * BITMAP_BITS) << (order + PAGE_SHIFT),
                            words[number].to_bytes(PAGE_SIZE, "little")))
    if not bitmaps:
        return 0

    chunks = []  # (order, [entry index into bitmaps, ...])
    for position, (order, _, _) in enumerate(bitmaps):
        if not chunks or chunks[-1][0] != order or len(chunks[-1][1]) == CHUNK_SLOTS:
            chunks.append((order, []))
        chunks[-1][1].append(position)

    base = memory.alloc_pages(len(chunks) + len(bitmaps))
    bitmap_base = base + len(chunks) * PAGE_SIZE
    image = []
    for number, (order, positions) in enumerate(chunks):
        last = number == len(chunks) - 1
        image.append(KhoserMemChunk.build(dict(
            hdr=dict(next=0 if last else base + (number + 1) * PAGE_SIZE, order=order),
            bitmaps=[dict(phys_start=bitmaps[p][1], bitmap=bitmap_base + p * PAGE_SIZE)
                     for p in positions])))
    image.extend(bitmap for _, _, bitmap in bitmaps)
    memory.write(base, b"".join(image))
    return base


def read_mem_map(memory, phys: int) -> dict[int, set[int]]:
    """Validate the chunk list at ``phys`` and return ``{order: {pfn >> order}}``."""
    orders: dict[int, set[int]] = {}
    for _, order, entries in _walk_chunks(memory, phys):
        shift = order + PAGE_SHIFT
        for phys_start, bitmap_phys, what in entries:
            bits = int.from_bytes(memory.read(bitmap_phys, PAGE_SIZE), "little")
            if not bits:
                continue  # the kernel keeps bitmaps whose bits were all cleared
            end = phys_start + (bits.bit_length() << shift)
            if end > memory.size:
                raise KhoFormatError(
                    f"{what}: order-{order} block at {end - (1 << shift):#x} lies beyond "
                    f"the end of physical memory ({memory.size:#x})")
            first = phys_start >> shift
            set_bits = format(bits, "b")[::-1]  # character i is bit i
            orders.setdefault(order, set()).update(
                first + bit for bit, value in enumerate(set_bits) if value == "1")
    return orders


def mem_map_pages(memory, phys: int) -> list[int]:
    """The chunk and bitmap pages of the map at ``phys`` (validated)."""
    pages = []
    for chunk_phys, _, entries in _walk_chunks(memory, phys):
        pages.append(chunk_phys)
        pages.extend(bitmap_phys for _, bitmap_phys, _ in entries)
    return pages


def release_mem_map(memory, phys: int) -> None:
    """Free the chunk and bitmap pages of a map, e.g. when finalize is aborted."""
    for page in mem_map_pages(memory, phys):
        memory.free_pages(page, 1)


def _walk_chunks(memory, phys: int) -> Iterator[tuple[int, int, list[tuple[int, int, str]]]]:
    """Yield ``(chunk_phys, order, [(phys_start, bitmap_phys, what), ...])``, validated."""
    chunks_seen = set()
    bitmaps_seen = set()
    while phys:
        what = f"KHO memory map: chunk at {phys:#x}"
        if phys in chunks_seen:
            raise KhoFormatError(f"{what} is visited twice: the chunk list has a loop")
        chunks_seen.add(phys)
        if phys % PAGE_SIZE:
            raise KhoFormatError(f"{what} is not page-aligned")
        raw = read_handover(memory, phys, PAGE_SIZE, what)
        hdr = KhoserMemChunkHdr.parse(raw)
        if hdr.order > MAX_ORDER:
            raise KhoFormatError(f"{what}: order {hdr.order} exceeds the maximum {MAX_ORDER}")
        if hdr.num_elms > CHUNK_SLOTS:
            raise KhoFormatError(
                f"{what}: {hdr.num_elms} entries, but a chunk holds at most {CHUNK_SLOTS}")
        span = BITMAP_BITS << (hdr.order + PAGE_SHIFT)
        entries = []
        for number, entry in enumerate(KhoserMemChunk.parse(raw).bitmaps):
            entry_what = f"{what} entry {number}"
            if entry.phys_start % span:
                raise KhoFormatError(
                    f"{entry_what}: start {entry.phys_start:#x} is not a multiple of the "
                    f"order-{hdr.order} bitmap span {span:#x}")
            if (hdr.order, entry.phys_start) in bitmaps_seen:
                raise KhoFormatError(
                    f"{entry_what}: a second order-{hdr.order} bitmap for {entry.phys_start:#x}")
            bitmaps_seen.add((hdr.order, entry.phys_start))
            if entry.bitmap % PAGE_SIZE:
                raise KhoFormatError(f"{entry_what}: bitmap {entry.bitmap:#x} is not page-aligned")
            if entry.bitmap == 0 or not memory.contains(entry.bitmap, PAGE_SIZE):
                raise KhoFormatError(
                    f"{entry_what}: bitmap {entry.bitmap:#x} lies outside physical memory "
                    f"(size {memory.size:#x})")
            entries.append((entry.phys_start, entry.bitmap, entry_what))
        yield phys, hdr.order, entries
        phys = hdr.next
