"""luofs.record_slabs: small records share slabs of preserved pages, written at flush."""

import os

import pytest

from kho import Handover, PhysicalMemory
from luofs.record_slabs import RecordSlabs


@pytest.fixture
def kho():
    memory = PhysicalMemory(16 << 20)
    yield RecordSlabs(memory, Handover(memory))
    memory.close()


def test_records_share_a_slab_and_read_back_before_and_after_flush(kho):
    free = kho.memory.free_page_count
    a, b = kho.store(b"A" * 48), kho.store(b"B" * 48)
    assert b - a == 48  # 16-byte aligned, side by side
    assert kho.memory.free_page_count == free - RecordSlabs.SLAB_PAGES
    assert kho.read(b, 48) == b"B" * 48  # buffered: not in RAM yet
    assert kho.memory.read(b, 48) == bytes(48)
    kho.flush()
    assert kho.memory.read(a, 48) == b"A" * 48 and kho.read(b, 48) == b"B" * 48
    assert kho.handover.preserved.covers(a, 48)


def test_a_slab_is_freed_and_unpreserved_with_its_last_record(kho):
    free = kho.memory.free_page_count
    a, b = kho.store(b"x" * 40), kho.store(b"y" * 40)
    kho.drop(a)
    assert kho.handover.preserved.covers(b, 40)
    kho.drop(b)
    assert kho.memory.free_page_count == free
    assert not kho.handover.preserved.covers(b, 40)
    kho.drop(b)  # dropping twice is harmless


def test_a_full_slab_starts_another(kho):
    per_slab = RecordSlabs.SLAB_PAGES * 4096 // 64
    phys = [kho.store(os.urandom(64)) for _ in range(per_slab + 1)]
    assert phys[-1] - phys[0] >= RecordSlabs.SLAB_PAGES * 4096


def test_a_record_larger_than_a_slab_gets_its_own_pages(kho):
    big = os.urandom(RecordSlabs.SLAB_PAGES * 4096 + 1)
    phys = kho.store(big)
    assert kho.memory.read(phys, len(big)) == big  # written at once
    free = kho.memory.free_page_count
    kho.drop(phys)
    assert kho.memory.free_page_count == free + RecordSlabs.SLAB_PAGES + 1
