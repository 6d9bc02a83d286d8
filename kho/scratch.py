"""Scratch areas: the memory a kernel may use before it knows what is preserved.

The kernel keeps (online NUMA nodes + 2) areas: lowmem, a global area, then
one per node (kho.md §5).  The emulator has one node, so three areas.  The
kernel sizes them from what memblock reserved at boot; the emulator has no
such number, so it scales them with RAM, capped at the example sizes of
``kho_scratch=16M,512M,256M``.  Sizes are powers of two so every area is
naturally aligned, like the kernel's CMA-aligned ones.  The layout only
depends on the RAM size, so every kernel of a machine derives the same areas,
as a new kernel reuses the previous kernel's ranges.
"""

from typing import NamedTuple

from .memory import PAGE_SIZE

_MiB = 1 << 20


class ScratchArea(NamedTuple):
    addr: int
    size: int


def _power_of_two_share(memory_size: int, divisor: int, cap: int) -> int:
    share = max(PAGE_SIZE, memory_size // divisor)
    return min(1 << (share.bit_length() - 1), cap)


def scratch_areas(memory_size: int) -> list[ScratchArea]:
    """``[lowmem, global, node 0]`` for RAM of ``memory_size`` bytes.

    Lowmem sits at the lowest address aligned to its size (above page 0);
    the global and per-node areas sit at the top of RAM, top-down.
    """
    lowmem = _power_of_two_share(memory_size, 64, 16 * _MiB)
    global_ = _power_of_two_share(memory_size, 16, 512 * _MiB)
    node = _power_of_two_share(memory_size, 32, 256 * _MiB)
    global_addr = (memory_size - global_) // global_ * global_
    node_addr = (global_addr - node) // node * node
    if node_addr < 2 * lowmem:
        raise ValueError(f"RAM of {memory_size:#x} bytes is too small for scratch areas")
    return [ScratchArea(lowmem, lowmem), ScratchArea(global_addr, global_),
            ScratchArea(node_addr, node)]


def scratch_debugfs(areas: list[ScratchArea]) -> dict[str, str]:
    """The text of debugfs ``out/scratch_phys`` and ``out/scratch_len`` (``0x%llx`` lines)."""
    return {"scratch_phys": "".join(f"{area.addr:#x}\n" for area in areas),
            "scratch_len": "".join(f"{area.size:#x}\n" for area in areas)}
