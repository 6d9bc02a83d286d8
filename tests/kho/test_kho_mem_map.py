import struct

import pytest
from construct import TerminatedError
from hypothesis import given, strategies as st

from kho.errors import KhoFormatError
from kho.mem_map import (BITMAP_BITS, CHUNK_SLOTS, KhoserMemBitmapPtr, KhoserMemChunk,
                         KhoserMemChunkHdr, read_mem_map, release_mem_map, write_mem_map)
from kho.memory import PAGE_SIZE, PhysicalMemory


def test_sizes():
    assert KhoserMemBitmapPtr.sizeof() == 16
    assert KhoserMemChunkHdr.sizeof() == 16
    assert CHUNK_SLOTS == 255 and 16 + CHUNK_SLOTS * 16 == PAGE_SIZE
    assert len(KhoserMemChunk.build(dict(hdr=dict(next=0, order=0), bitmaps=[]))) == PAGE_SIZE


def test_chunk_field_offsets():
    chunk = KhoserMemChunk.build(dict(hdr=dict(next=0x11000, order=3),
                                      bitmaps=[dict(phys_start=0x800000000, bitmap=0x7000)]))
    assert struct.unpack_from("<QIIQQ", chunk) == (0x11000, 3, 1, 0x800000000, 0x7000)
    assert chunk[32:] == bytes(PAGE_SIZE - 32)


entries = st.lists(st.fixed_dictionaries({"phys_start": st.integers(0, 2**64 - 1),
                                          "bitmap": st.integers(0, 2**64 - 1)}),
                   max_size=CHUNK_SLOTS)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), entries, st.binary(min_size=16 * CHUNK_SLOTS, max_size=16 * CHUNK_SLOTS))
def test_chunk_round_trips_byte_exact(next_, order, bitmaps, junk):
    built = KhoserMemChunk.build(dict(hdr=dict(next=next_, order=order), bitmaps=bitmaps))
    assert KhoserMemChunk.build(KhoserMemChunk.parse(built)) == built
    # whatever sits in the unused slots survives a parse/build cycle too
    dirty = built[:16 + 16 * len(bitmaps)] + junk[16 * len(bitmaps):]
    assert KhoserMemChunk.build(KhoserMemChunk.parse(dirty)) == dirty


def test_chunk_rejects_trailing_junk():
    built = KhoserMemChunk.build(dict(hdr=dict(next=0, order=0), bitmaps=[]))
    with pytest.raises(TerminatedError):
        KhoserMemChunk.parse(built + b"\0")


def test_empty_map_is_address_zero(memory):
    assert write_mem_map(memory, {}) == 0
    assert read_mem_map(memory, 0) == {}


def test_written_layout_matches_the_kernel_format():
    with PhysicalMemory(4 * BITMAP_BITS * PAGE_SIZE) as memory:
        _check_written_layout(memory)


def _check_written_layout(memory):
    # order 0: pages 3 and 32768+1 (two bitmaps); order 2: block index 5
    phys = write_mem_map(memory, {0: {3, BITMAP_BITS + 1}, 2: {5}})
    first = KhoserMemChunk.parse(memory.read(phys, PAGE_SIZE))
    assert first.hdr.order == 0 and first.hdr.num_elms == 2
    assert [e.phys_start for e in first.bitmaps] == [0, BITMAP_BITS * PAGE_SIZE]
    bitmap = memory.read(first.bitmaps[0].bitmap, PAGE_SIZE)
    assert bitmap == b"\x08" + bytes(PAGE_SIZE - 1)
    second = KhoserMemChunk.parse(memory.read(first.hdr.next, PAGE_SIZE))
    assert second.hdr.order == 2 and second.hdr.next == 0
    assert memory.read(second.bitmaps[0].bitmap, 1) == b"\x20"
    assert read_mem_map(memory, phys) == {0: {3, BITMAP_BITS + 1}, 2: {5}}


def test_full_chunks_continue_in_a_new_chunk():
    # 256 order-0 bitmaps (one per 128 MiB) overflow the 255 slots of a chunk
    with PhysicalMemory(256 * BITMAP_BITS * PAGE_SIZE) as big:
        orders = {0: {n * BITMAP_BITS + n for n in range(256)}}
        phys = write_mem_map(big, orders)
        first = KhoserMemChunk.parse(big.read(phys, PAGE_SIZE))
        second = KhoserMemChunk.parse(big.read(first.hdr.next, PAGE_SIZE))
        assert (first.hdr.num_elms, second.hdr.num_elms, second.hdr.next) == (255, 1, 0)
        assert read_mem_map(big, phys) == orders


def test_release_frees_every_page(memory):
    before = memory.free_page_count
    phys = write_mem_map(memory, {0: {1, 2, BITMAP_BITS * 3}, 5: {1}})
    assert memory.free_page_count == before - 5
    release_mem_map(memory, phys)
    assert memory.free_page_count == before


def test_cleared_bitmaps_are_accepted(memory):
    phys = write_mem_map(memory, {0: {7}})
    chunk = KhoserMemChunk.parse(memory.read(phys, PAGE_SIZE))
    memory.write(chunk.bitmaps[0].bitmap, bytes(PAGE_SIZE))
    assert read_mem_map(memory, phys) == {}


# -- tampering ----------------------------------------------------------------------------

def _tamper(memory, orders, edit):
    """Write a map, let ``edit(chunk_phys, chunk)`` return a new chunk, read it back."""
    phys = write_mem_map(memory, orders)
    chunk = KhoserMemChunk.parse(memory.read(phys, PAGE_SIZE))
    replacement = edit(phys, chunk)
    memory.write(phys, replacement)
    return phys


def _rebuild(chunk, **hdr):
    data = KhoserMemChunk.build(dict(hdr=dict(next=chunk.hdr.next, order=chunk.hdr.order),
                                     bitmaps=chunk.bitmaps))
    header = dict(next=chunk.hdr.next, order=chunk.hdr.order, num_elms=chunk.hdr.num_elms)
    header.update(hdr)
    return KhoserMemChunkHdr.build(header) + data[16:]


def _entry(chunk, **fields):
    entries = [dict(e) for e in chunk.bitmaps]
    entries[0].update(fields)
    return KhoserMemChunk.build(dict(hdr=dict(next=chunk.hdr.next, order=chunk.hdr.order),
                                     bitmaps=entries))


@pytest.mark.parametrize("edit, message", [
    (lambda phys, c: _rebuild(c, next=phys), "is visited twice: the chunk list has a loop"),
    (lambda phys, c: _rebuild(c, order=52), "order 52 exceeds the maximum 51"),
    (lambda phys, c: _rebuild(c, num_elms=256), "256 entries, but a chunk holds at most 255"),
    (lambda phys, c: _rebuild(c, next=phys + 8), "is not page-aligned"),
    (lambda phys, c: _rebuild(c, next=1 << 40), "lie outside physical memory"),
    (lambda phys, c: _entry(c, bitmap=1 << 40), "entry 0: bitmap 0x10000000000 lies outside"),
    (lambda phys, c: _entry(c, bitmap=0), "entry 0: bitmap 0x0 lies outside"),
    (lambda phys, c: _entry(c, bitmap=c.bitmaps[0].bitmap + 1), "is not page-aligned"),
    (lambda phys, c: _entry(c, phys_start=PAGE_SIZE), "is not a multiple of the order-0 bitmap span 0x8000000"),
    (lambda phys, c: _entry(c, phys_start=BITMAP_BITS * PAGE_SIZE), "order-0 block at 0x8007000 lies beyond the end of physical memory \\(0x4000000\\)"),
    (lambda phys, c: KhoserMemChunk.build(dict(hdr=dict(next=0, order=0), bitmaps=[c.bitmaps[0]] * 2)),
     "entry 1: a second order-0 bitmap for 0x0"),
])
def test_tampered_maps_are_rejected(memory, edit, message):
    phys = _tamper(memory, {0: {7}}, edit)
    with pytest.raises(KhoFormatError, match=message):
        read_mem_map(memory, phys)


def test_first_chunk_pointer_is_checked(memory):
    with pytest.raises(KhoFormatError, match="chunk at 0x1008 is not page-aligned"):
        read_mem_map(memory, 0x1008)
    with pytest.raises(KhoFormatError, match="chunk at 0x4000000: 4096 bytes at 0x4000000 lie outside"):
        read_mem_map(memory, memory.size)


def test_flipped_bitmap_bit_changes_the_set(memory):
    phys = write_mem_map(memory, {0: {7}})
    bitmap = KhoserMemChunk.parse(memory.read(phys, PAGE_SIZE)).bitmaps[0].bitmap
    memory.write(bitmap, b"\x81")
    assert read_mem_map(memory, phys) == {0: {0, 7}}
