import errno

import pytest
from hypothesis import given, settings, strategies as st

from kho.mem_map import release_mem_map
from kho.memory import PAGE_SIZE, PhysicalAddressError, PhysicalMemory
from kho.preserve import Block, PreservedMemory, split_range


def test_split_follows_alignment_and_size():
    # pfn 3: trailing zeros 0 -> order 0; pfn 4: 2 pages... kho_preserve_phys's rule
    blocks = list(split_range(3 * PAGE_SIZE, 13 * PAGE_SIZE))
    assert blocks == [Block(0x3000, 0), Block(0x4000, 2), Block(0x8000, 3)]
    assert sum(block.size for block in blocks) == 13 * PAGE_SIZE


def test_split_of_a_large_aligned_range_is_one_block():
    assert list(split_range(1 << 30, 1 << 30)) == [Block(1 << 30, 18)]
    assert list(split_range(0, 3 * PAGE_SIZE)) == [Block(0, 1), Block(0x2000, 0)]


def test_split_rejects_unaligned_ranges():
    with pytest.raises(PhysicalAddressError, match="not a page-aligned range"):
        list(split_range(0x1001, PAGE_SIZE))
    with pytest.raises(PhysicalAddressError, match="not a page-aligned range"):
        list(split_range(0x1000, 100))


@given(st.integers(0, 1 << 20), st.integers(0, 1 << 12))
def test_split_covers_the_range_exactly_with_aligned_blocks(pfn, pages):
    cursor = pfn * PAGE_SIZE
    for block in split_range(pfn * PAGE_SIZE, pages * PAGE_SIZE):
        assert block.phys == cursor
        assert block.phys % block.size == 0
        cursor += block.size
    assert cursor == (pfn + pages) * PAGE_SIZE


def test_preserve_unpreserve_and_iteration_order():
    preserved = PreservedMemory()
    preserved.preserve(0x10000, 0x3000)
    preserved.preserve_folio(0x200000, 9)
    assert list(preserved) == [Block(0x10000, 1), Block(0x12000, 0), Block(0x200000, 9)]
    assert len(preserved) == 3
    preserved.unpreserve(0x10000, 0x3000)
    assert list(preserved) == [Block(0x200000, 9)]
    preserved.unpreserve_folio(0x200000, 9)
    assert len(preserved) == 0 and preserved == PreservedMemory()


def test_preserving_twice_is_harmless():
    preserved = PreservedMemory()
    preserved.preserve(0x4000, 0x4000)
    preserved.preserve(0x4000, 0x4000)
    assert list(preserved) == [Block(0x4000, 2)]


def test_unpreserve_must_match_and_is_all_or_nothing():
    preserved = PreservedMemory()
    preserved.preserve(0x4000, 0x4000)
    with pytest.raises(PhysicalAddressError, match="order-0 block at 0x4000 is not preserved"):
        preserved.unpreserve(0x4000, 0x1000)
    with pytest.raises(PhysicalAddressError, match="order-2 block at 0x8000 is not preserved"):
        preserved.unpreserve(0x4000, 0x8000)
    assert list(preserved) == [Block(0x4000, 2)]


@pytest.mark.parametrize("phys, order, message", [
    (0x1000, 1, "not aligned to its order-1 size 0x2000"),
    (0, 52, "order 52 is outside 0..51"),
    (0, -1, "order -1 is outside"),
])
def test_folio_checks(phys, order, message):
    with pytest.raises(PhysicalAddressError, match=message):
        PreservedMemory().preserve_folio(phys, order)


def test_frozen_preserved_memory_refuses_changes_with_ebusy():
    preserved = PreservedMemory()
    preserved.preserve(0x1000, 0x1000)
    preserved.freeze()
    for change in (lambda: preserved.preserve(0x2000, 0x1000),
                   lambda: preserved.unpreserve(0x1000, 0x1000),
                   lambda: preserved.preserve_folio(0x2000, 0),
                   lambda: preserved.unpreserve_folio(0x1000, 0)):
        with pytest.raises(OSError) as info:
            change()
        assert info.value.errno == errno.EBUSY
    preserved.thaw()
    preserved.unpreserve(0x1000, 0x1000)


def test_covers():
    preserved = PreservedMemory()
    preserved.preserve(0x4000, 0x4000)
    preserved.preserve(0x8000, 0x1000)
    assert preserved.covers(0x4000, 0x5000)
    assert preserved.covers(0x5800, 0x10)
    assert not preserved.covers(0x4000, 0x5001)
    assert not preserved.covers(0x3fff, 2)


def test_equality_ignores_history():
    a, b = PreservedMemory(), PreservedMemory()
    a.preserve(0x1000, 0x1000)
    a.preserve(0x2000, 0x2000)
    a.unpreserve(0x1000, 0x1000)
    b.preserve_folio(0x2000, 1)
    assert a == b
    b.preserve_folio(0x8000, 0)
    assert a != b


block_ranges = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 600)), max_size=25)


@settings(max_examples=150)
@given(block_ranges, st.data())
def test_random_preserve_unpreserve_round_trips_through_the_map(ranges, data):
    with PhysicalMemory(1 << 29) as memory:
        _round_trip(memory, ranges, data)


def _round_trip(memory, ranges, data):
    preserved = PreservedMemory()
    for pfn, pages in ranges:
        preserved.preserve(pfn * PAGE_SIZE, pages * PAGE_SIZE)
    for pfn, pages in data.draw(st.lists(st.sampled_from(ranges), unique=True)) if ranges else []:
        try:
            preserved.unpreserve(pfn * PAGE_SIZE, pages * PAGE_SIZE)
        except PhysicalAddressError:
            pass  # an overlapping range already removed some of its blocks
    free_before = memory.free_page_count
    phys = preserved.serialize(memory)
    restored = PreservedMemory.deserialize(memory, phys)
    assert restored == preserved
    assert list(restored) == list(preserved)
    if phys:
        release_mem_map(memory, phys)
    assert memory.free_page_count == free_before
