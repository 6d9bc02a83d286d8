"""kho/luo_write.py: laying an image out in preserved memory, publishing and releasing it."""

import errno

import pytest

from kho.handover import Handover
from kho.luo_image import LUO_SUBTREE, FileImage, FlbImage, LuoImage, SessionImage
from kho.luo_read import read_luo
from kho.luo_write import publish_luo, release_luo, write_luo
from kho.memory import PAGE_SIZE, OutOfPhysicalMemory, PhysicalMemory
from kho.preserve import PreservedMemory

from .luo_samples import IMAGE, headers


def test_every_block_is_preserved_and_release_undoes_everything(memory):
    preserved = PreservedMemory()
    free_before = memory.free_page_count
    blob = write_luo(memory, preserved, IMAGE)
    session_phys, flb_phys = headers(blob)
    assert preserved.covers(session_phys, PAGE_SIZE) and preserved.covers(flb_phys, PAGE_SIZE)
    assert len(preserved) == 3 and memory.free_page_count == free_before - 3
    release_luo(memory, blob, preserved)
    assert len(preserved) == 0 and memory.free_page_count == free_before


def test_publishing_again_and_again_preserves_no_more_than_once(memory):
    handover = Handover(memory)
    publish_luo(handover, IMAGE)
    blocks, free = list(handover.preserved), memory.free_page_count
    assert len(blocks) == 4  # files, sessions, FLBs, the subtree's FDT
    for _ in range(20):
        publish_luo(handover, IMAGE)
        assert len(handover.preserved) == len(blocks) and memory.free_page_count == free
    assert read_luo(memory, handover.subtrees[LUO_SUBTREE]) == IMAGE


def test_publishing_another_image_releases_the_first(memory):
    handover = Handover(memory)
    free = memory.free_page_count
    publish_luo(handover, LuoImage(0))
    publish_luo(handover, IMAGE)
    assert len(handover.preserved) == 4 and memory.free_page_count == free - 4
    publish_luo(handover, None)
    assert LUO_SUBTREE not in handover.subtrees
    assert len(handover.preserved) == 0 and memory.free_page_count == free


def test_publish_that_fails_leaves_nothing_of_the_new_image():
    with PhysicalMemory(4 * PAGE_SIZE) as small:  # page 0 is never handed out: 3 pages
        handover = Handover(small)
        # the three blocks fit; the subtree's FDT finds no page left
        with pytest.raises(OutOfPhysicalMemory,
                           match="cannot allocate 1 contiguous pages; largest free range is 0"):
            publish_luo(handover, IMAGE)
        assert LUO_SUBTREE not in handover.subtrees
        assert len(handover.preserved) == 0 and small.free_page_count == 3


def test_publish_after_finalize_is_refused_with_ebusy(memory):
    handover = Handover(memory)
    publish_luo(handover, IMAGE)
    handover.finalize()
    blocks = list(handover.preserved)
    with pytest.raises(OSError, match="unpreserve: KHO is finalized") as caught:
        publish_luo(handover, IMAGE)
    assert caught.value.errno == errno.EBUSY and list(handover.preserved) == blocks


def test_failed_write_leaves_nothing_behind():
    with PhysicalMemory(4 * PAGE_SIZE) as small:
        preserved = PreservedMemory()
        big = LuoImage(1, [SessionImage(b"s", [FileImage("memfd-v2", 0, t) for t in range(100)])])
        with pytest.raises(OutOfPhysicalMemory):
            write_luo(small, preserved, big)   # files fit, the session block does not
        assert small.free_page_count == 3 and len(preserved) == 0


@pytest.mark.parametrize("image, message", [
    (LuoImage(-1), "liveupdate_number -1 is not a u64"),
    (LuoImage(1, [SessionImage("text")]), "session name 'text' must be bytes"),
    (LuoImage(1, [SessionImage(b"x" * 64)]), "must be bytes of at most 63"),
    (LuoImage(1, [SessionImage(b"a\0b")]), "without NUL"),
    (LuoImage(1, [SessionImage(b"a"), SessionImage(b"a")]), "session name 'a' is used twice"),
    (LuoImage(1, [SessionImage(b"a", [FileImage("m", 0, 5), FileImage("m", 1, 5)])]),
     "session 'a': token 5 is used twice"),
    (LuoImage(1, [SessionImage(b"a", [FileImage("", 0, 5)])]), "file compatible '' must be 1 to 47"),
    (LuoImage(1, [SessionImage(b"a", [FileImage("x" * 48, 0, 5)])]), "must be 1 to 47 ASCII"),
    (LuoImage(1, [SessionImage(b"a", [FileImage("mémfd", 0, 5)])]), "must be 1 to 47 ASCII"),
    (LuoImage(1, [SessionImage(b"a", [FileImage("m", 2**64, 5)])]), "session 'a' file 0 data 18446744073709551616 is not a u64"),
    (LuoImage(1, [SessionImage(b"a", [FileImage("m", 0, 5), FileImage("m", 0, -1)])]), "session 'a' file 1 token -1 is not a u64"),
    (LuoImage(1, flbs=[FlbImage("f", 0, 0), FlbImage("f", 1, 1)]), "FLB 'f' appears twice"),
    (LuoImage(1, flbs=[FlbImage("f", 0, -3)]), "FLB 'f' count -3 is not a u64"),
    (LuoImage(1, subsystems={"compatible": 1}), "cannot be named 'compatible'"),
    (LuoImage(1, subsystems={"a b": 1}), "not a valid FDT property name"),
    (LuoImage(1, subsystems={"kvm": 2**64}), "subsystem 'kvm' 18446744073709551616 is not a u64"),
])
def test_images_the_format_cannot_carry_are_refused(memory, image, message):
    preserved = PreservedMemory()
    free_before = memory.free_page_count
    with pytest.raises(ValueError, match=message):
        write_luo(memory, preserved, image)
    assert memory.free_page_count == free_before and len(preserved) == 0


def test_names_may_be_empty_or_63_bytes(memory):
    image = LuoImage(1, [SessionImage(b""), SessionImage(b"n" * 63, [FileImage("c" * 47, 1, 2)])])
    assert read_luo(memory, write_luo(memory, PreservedMemory(), image)) == image
