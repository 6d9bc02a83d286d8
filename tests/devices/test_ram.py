"""devices/ram.py: the machine's view of RAM, and its page size (KHO's, without KHO)."""

import os

import pytest

from devices.ram import PAGE_SHIFT, PAGE_SIZE, RamView
from kho import memory as kho_memory


@pytest.fixture
def ram():
    fd = os.memfd_create("ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4 * PAGE_SIZE)
    view = RamView(fd)
    yield view
    view.close()


def test_the_page_is_khos():
    assert (PAGE_SHIFT, PAGE_SIZE) == (kho_memory.PAGE_SHIFT, kho_memory.PAGE_SIZE)


def test_reads_and_writes(ram):
    ram.write(PAGE_SIZE - 2, b"abcd")
    assert ram.read(PAGE_SIZE - 2, 4) == b"abcd"
    assert ram.contains(0, 4 * PAGE_SIZE) and not ram.contains(1, 4 * PAGE_SIZE)


def test_an_access_outside_ram_is_a_value_error(ram):
    with pytest.raises(ValueError, match=r"^4 bytes at 0x3ffe lie outside RAM \[0, 0x4000\)$"):
        ram.read(4 * PAGE_SIZE - 2, 4)
    with pytest.raises(ValueError, match=r"^1 bytes at -0x1 lie outside RAM"):
        ram.write(-1, b"x")


def test_a_short_read_is_an_os_error(ram):
    os.ftruncate(ram.fd, PAGE_SIZE)  # the memfd shrank behind the view's back
    with pytest.raises(OSError, match=r"^short DMA read at 0x1000: 0 of 8 bytes$"):
        ram.read(PAGE_SIZE, 8)
