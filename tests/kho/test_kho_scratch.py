import pytest

from kho.memory import PAGE_SIZE
from kho.scratch import ScratchArea, scratch_areas, scratch_debugfs

MiB = 1 << 20


def test_one_gib_machine():
    assert scratch_areas(1024 * MiB) == [ScratchArea(16 * MiB, 16 * MiB),
                                         ScratchArea(960 * MiB, 64 * MiB),
                                         ScratchArea(928 * MiB, 32 * MiB)]


def test_sizes_are_capped_like_kho_scratch_16M_512M_256M():
    lowmem, global_, node = scratch_areas(64 << 30)
    assert (lowmem.size, global_.size, node.size) == (16 * MiB, 512 * MiB, 256 * MiB)


@pytest.mark.parametrize("size", [16 * PAGE_SIZE, 64 * MiB, 100 * MiB + PAGE_SIZE, 3 << 30])
def test_areas_are_aligned_disjoint_and_inside_ram(size):
    areas = scratch_areas(size)
    assert len(areas) == 3
    for area in areas:
        assert area.size >= PAGE_SIZE and area.addr % area.size == 0
        assert 0 < area.addr and area.addr + area.size <= size
    spans = sorted((a.addr, a.addr + a.size) for a in areas)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def test_ram_too_small_for_scratch():
    with pytest.raises(ValueError, match="too small for scratch areas"):
        scratch_areas(3 * PAGE_SIZE)


def test_debugfs_text():
    text = scratch_debugfs([ScratchArea(0x1000000, 0x1000000), ScratchArea(0x3c000000, 0x4000000)])
    assert text == {"scratch_phys": "0x1000000\n0x3c000000\n",
                    "scratch_len": "0x1000000\n0x4000000\n"}
