"""devices/registers.py: the DMA engine's register page, as its construct definition says."""

import os

import pytest
from construct import Int64ul, Struct

from devices.registers import BAR_SIZE, OFFSETS, REGISTERS, Bar

#: The register page, written independently of the module, as the oracle.
DmaRegisters = Struct(*(name / Int64ul for name in (
    "id", "status", "ring_iova", "ring_entries", "iommu_root", "head", "tail", "epoch",
    "next_seq", "fault_iova")))


@pytest.fixture
def bar():
    bar = Bar.create("test")
    yield bar
    bar.close()


def test_the_layout_is_the_construct_definition():
    assert REGISTERS.size == DmaRegisters.sizeof() and list(OFFSETS) == [
        sub.name for sub in DmaRegisters.subcons]
    assert list(OFFSETS.values()) == [8 * i for i in range(len(OFFSETS))]


def test_writes_land_where_the_definition_says(bar):
    for i, name in enumerate(OFFSETS):
        bar.write(name, 1000 + i)
    parsed = DmaRegisters.parse(os.pread(bar.fd, DmaRegisters.sizeof(), 0))
    assert {name: parsed[name] for name in OFFSETS} == {n: 1000 + i for i, n in enumerate(OFFSETS)}
    assert bar.snapshot() == {n: 1000 + i for i, n in enumerate(OFFSETS)}
    assert bar.read("tail") == 1006


def test_clear_zeroes_the_page_and_close_is_idempotent(bar):
    bar.write("head", 5)
    bar.clear()
    assert os.pread(bar.fd, BAR_SIZE, 0) == bytes(BAR_SIZE)
    bar.close()
    bar.close()
    assert bar.fd == -1


def test_an_unknown_register_is_a_key_error(bar):
    with pytest.raises(KeyError):
        bar.read("doorbell")
