"""I/O page tables live in RAM; the device's DMA walks them there."""

import struct

import pytest

from devices.dma_driver import RING_IOVA
from devices.iommu import (PTE_PRESENT, PTE_WRITE, IoPageTable, IommuFault, translate)
from devices.registers import STATUS_FAULT
from kho import PAGE_SIZE, PhysicalMemory

MiB = 1 << 20


@pytest.fixture
def memory():
    with PhysicalMemory(16 * MiB) as ram:
        yield ram


def test_mapping_and_translation_go_through_ram(memory):
    iova = 0x1000_0000
    ring = memory.alloc_pages(4)
    table = IoPageTable.create(memory, iova, 4)
    table.map(iova, ring, 4)
    assert table.pages == 2  # the root and one L1 table
    for n in range(4):
        assert translate(memory, table.root, iova + n * PAGE_SIZE + 40) == ring + n * PAGE_SIZE + 40
    # the PTE is an ordinary u64 in RAM: phys | PRESENT | WRITE
    l1 = struct.unpack("<Q", memory.read(table.root + 8 * ((iova >> 21) & 511), 8))[0] & ~0xFFF
    pte = struct.unpack("<Q", memory.read(l1, 8))[0]
    assert pte == ring | PTE_PRESENT | PTE_WRITE


def test_tables_span_l1_boundaries(memory):
    iova = 0x1000_0000 + 2 * MiB - 2 * PAGE_SIZE  # 2 pages before a 2 MiB boundary
    pages = memory.alloc_pages(4)
    table = IoPageTable.create(memory, iova, 4)
    table.map(iova, pages, 4)
    assert table.pages == 3  # root + 2 L1 tables
    assert translate(memory, table.root, iova + 3 * PAGE_SIZE) == pages + 3 * PAGE_SIZE


@pytest.mark.parametrize("damage, reason", [
    (lambda t, m, iova: t.unmap(iova + PAGE_SIZE), "page not mapped"),
    (lambda t, m, iova: m.write(t.root + 8 * ((iova >> 21) & 511), bytes(8)), "no L1 table"),
])
def test_unmapped_iova_faults(memory, damage, reason):
    iova = 0x1000_0000
    page = memory.alloc_pages(2)
    table = IoPageTable.create(memory, iova, 2)
    table.map(iova, page, 2)
    damage(table, memory, iova)
    with pytest.raises(IommuFault, match=reason) as e:
        translate(memory, table.root, iova + PAGE_SIZE)
    assert e.value.iova == iova + PAGE_SIZE


def test_other_faults(memory):
    iova = 0x1000_0000
    page = memory.alloc_pages(1)
    table = IoPageTable.create(memory, iova, 1)
    table.map(iova, page, 1, write=False)
    assert translate(memory, table.root, iova, write=False) == page
    with pytest.raises(IommuFault, match="read-only"):
        translate(memory, table.root, iova)
    with pytest.raises(IommuFault, match="outside the 30-bit IOVA space"):
        translate(memory, table.root, 1 << 30)
    with pytest.raises(IommuFault, match="no valid root"):
        translate(memory, 0, iova)
    with pytest.raises(ValueError):
        table.map(iova + 4 * MiB, page, 1)  # beyond what the tables cover


def test_a_device_that_faults_stops(machine_factory):
    machine = machine_factory("dma0:rate=0,ring=256", irq_thread=False)
    kernel = machine.boot()
    engine = machine.host.engine("dma0")
    channel = kernel.device("dma0").driver_data
    channel.pt.unmap(RING_IOVA + PAGE_SIZE)  # the ring's second page
    assert engine.produce(100) == 100  # the first page still works
    assert engine.produce(100) == 0    # would cross into the unmapped page
    info = engine.info()
    assert info["iommu_faults"] == 1 and not info["running"]
    assert info["fault"] == "page not mapped" and info["records_written"] == 100
    assert engine.bar.read("fault_iova") == RING_IOVA + PAGE_SIZE
    assert engine.bar.read("status") == STATUS_FAULT
    assert engine.produce(10) == 0 and engine.info()["iommu_faults"] == 1  # it stays stopped
    kernel.drivers.service_all()
    assert kernel.drivers.status()[-1]["device_faulted"]
    assert machine.ledger.received["dma0"] == 100
