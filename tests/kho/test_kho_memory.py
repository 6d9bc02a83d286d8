import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from kho.errors import KhoFormatError
from kho.memory import (PAGE_SIZE, OutOfPhysicalMemory, PhysicalAddressError, PhysicalMemory,
                        pages_for, read_handover)

REPO = Path(__file__).resolve().parents[2]


def test_size_must_be_whole_pages():
    with pytest.raises(PhysicalAddressError, match="multiple of 4096"):
        PhysicalMemory(PAGE_SIZE * 4 + 1)
    with pytest.raises(PhysicalAddressError, match="at least two pages"):
        PhysicalMemory(PAGE_SIZE)


def test_ram_is_a_sparse_memfd(memory):
    st_ = os.fstat(memory.fd)
    assert st_.st_size == memory.size
    assert st_.st_blocks == 0
    assert os.readlink(f"/proc/self/fd/{memory.fd}").startswith("/memfd:luofs-ram")


def test_page_zero_is_never_allocated(memory):
    addresses = [memory.alloc_pages(1) for _ in range(memory.size // PAGE_SIZE - 1)]
    assert 0 not in addresses
    assert sorted(addresses) == list(range(PAGE_SIZE, memory.size, PAGE_SIZE))
    with pytest.raises(OutOfPhysicalMemory):
        memory.alloc_pages(1)


def test_first_fit_and_coalescing(memory):
    a = memory.alloc_pages(2)
    b = memory.alloc_pages(3)
    c = memory.alloc_pages(1)
    assert (a, b, c) == (PAGE_SIZE, 3 * PAGE_SIZE, 6 * PAGE_SIZE)
    memory.free_pages(a, 2)
    assert memory.alloc_pages(1) == a          # first fit reuses the hole
    memory.free_pages(a, 1)
    memory.free_pages(b, 3)                    # merges with the hole before it
    assert memory.alloc_pages(5) == a
    memory.free_pages(a, 5)
    memory.free_pages(c, 1)
    assert memory.free_page_count == memory.size // PAGE_SIZE - 1
    assert memory._free == [(1, memory.size // PAGE_SIZE)]


def test_out_of_memory_is_an_enomem_memory_error():
    with PhysicalMemory(8 * PAGE_SIZE) as small:
        small.alloc_pages(3)
        small.alloc_pages(2)
        with pytest.raises(MemoryError) as info:
            small.alloc_pages(3)
    assert isinstance(info.value, OutOfPhysicalMemory)
    assert info.value.errno == 12
    assert "cannot allocate 3 contiguous pages; largest free range is 2 pages" in str(info.value)


@pytest.mark.parametrize("phys, n, message", [
    (PAGE_SIZE + 1, 1, "not a non-empty page-aligned range"),
    (PAGE_SIZE, 0, "not a non-empty page-aligned range"),
    (0, 1, "page 0 is reserved"),
    (64 << 20, 1, "outside physical memory"),
])
def test_free_rejects_bad_ranges(memory, phys, n, message):
    with pytest.raises(PhysicalAddressError, match=message):
        memory.free_pages(phys, n)


def test_double_free_is_detected(memory):
    phys = memory.alloc_pages(4)
    memory.free_pages(phys + PAGE_SIZE, 1)
    with pytest.raises(PhysicalAddressError, match="already free"):
        memory.free_pages(phys, 2)
    with pytest.raises(PhysicalAddressError, match="already free"):
        memory.free_pages(phys + 5 * PAGE_SIZE, 1)


def test_read_write_and_bounds(memory):
    memory.write(0x3000, b"hello")
    assert memory.read(0x3000, 5) == b"hello"
    assert memory.read(memory.size - 3, 3) == b"\0\0\0"
    with pytest.raises(PhysicalAddressError, match=r"read: 4 bytes at 0x3fffffe lie outside"):
        memory.read(memory.size - 2, 4)
    with pytest.raises(PhysicalAddressError, match="write: 1 bytes at -0x1"):
        memory.write(-1, b"x")


def test_reserve_is_idempotent_and_splits_free_ranges(memory):
    total = memory.free_page_count
    memory.reserve(0x5000, 0x2000)
    memory.reserve(0x5800, 0x10)                 # inside, already reserved
    memory.reserve(0x6fff, 2)                    # touches the next page too
    assert memory.free_page_count == total - 3
    assert memory._free[:2] == [(1, 5), (8, memory.size // PAGE_SIZE)]
    assert memory.alloc_pages(4) == 0x1000
    assert memory.alloc_pages(1) == 0x8000


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "reserve"]),
                          st.integers(1, 40), st.integers(1, 63)), max_size=40))
def test_allocator_matches_a_page_set_model(ops):
    with PhysicalMemory(64 * PAGE_SIZE) as ram:
        used = {0}
        allocations = []
        for op, n, at in ops:
            if op == "alloc":
                try:
                    phys = ram.alloc_pages(n)
                except OutOfPhysicalMemory:
                    assert not any(all(p + i not in used and p + i < 64 for i in range(n))
                                   for p in range(64))
                    continue
                pages = set(range(phys // PAGE_SIZE, phys // PAGE_SIZE + n))
                assert not pages & used
                # first fit: no earlier hole was big enough
                assert not any(all(p + i not in used for i in range(n))
                               for p in range(1, phys // PAGE_SIZE))
                used |= pages
                allocations.append((phys, n))
            elif op == "free" and allocations:
                phys, count = allocations.pop(at % len(allocations))
                ram.free_pages(phys, count)
                used -= set(range(phys // PAGE_SIZE, phys // PAGE_SIZE + count))
            elif op == "reserve":
                count = min(n, 64 - at)
                ram.reserve(at * PAGE_SIZE, count * PAGE_SIZE)
                used |= set(range(at, at + count))
                allocations = [(p, c) for p, c in allocations
                               if not set(range(p // PAGE_SIZE, p // PAGE_SIZE + c)) & set(range(at, at + count))]
            assert ram.free_page_count == 64 - len(used)


def test_adopt_inherits_contents_and_reservations(memory):
    phys = memory.alloc_pages(2)
    memory.write(phys, b"preserved")
    with PhysicalMemory.adopt(os.dup(memory.fd), [(phys, 2 * PAGE_SIZE)]) as adopted:
        assert adopted.size == memory.size
        assert adopted.read(phys, 9) == b"preserved"
        assert adopted.alloc_pages(1) == 3 * PAGE_SIZE


def test_adopt_in_another_process(memory):
    memory.write(0x1000, b"across exec")
    child = ("import sys; from kho.memory import PhysicalMemory;"
             "m = PhysicalMemory.adopt(int(sys.argv[1]), [(0x1000, 4096)]);"
             "print(m.read(0x1000, 11).decode(), hex(m.alloc_pages(1)))")
    result = subprocess.run([sys.executable, "-c", child, str(memory.fd)], pass_fds=[memory.fd],
                            capture_output=True, text=True, check=True,
                            cwd=REPO)
    assert result.stdout.split() == ["across", "exec", "0x2000"]


def test_close_is_idempotent():
    ram = PhysicalMemory(2 * PAGE_SIZE)
    fd = ram.fd
    ram.close()
    ram.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_pages_for():
    assert [pages_for(n) for n in (0, 1, 4096, 4097)] == [1, 1, 1, 2]


def test_read_handover_turns_bad_pointers_into_format_errors(memory):
    with pytest.raises(KhoFormatError, match="thing: address is 0"):
        read_handover(memory, 0, 8, "thing")
    with pytest.raises(KhoFormatError, match=r"thing: 16 bytes at 0x3fffff8 lie outside physical memory \(size 0x4000000\)"):
        read_handover(memory, memory.size - 8, 16, "thing")
