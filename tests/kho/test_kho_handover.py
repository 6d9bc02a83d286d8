import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kho.errors import KhoFormatError
from kho.fdt_blob import new_node, new_tree, to_blob, u64_prop
from kho.handover import Handover, IncomingHandover
from kho.luo_image import FileImage, LuoImage, SessionImage
from kho.luo_read import read_luo
from kho.luo_write import write_luo
from kho.mem_map import mem_map_pages
from kho.memory import PAGE_SIZE, OutOfPhysicalMemory, PhysicalMemory
from kho.preserve import PreservedMemory
from kho.root_tree import build_root, parse_root

REPO = Path(__file__).resolve().parents[2]


def _memblock_fdt():
    """The in-tree example user (kho.md §2): memblock's reserve_mem subtree."""
    tree = new_tree("memblock-v1")
    region = new_node("r1", "reserve-mem-v1")
    region.append(u64_prop("start", 0x100000))
    region.append(u64_prop("size", 0x2000))
    tree.root.append(region)
    return to_blob(tree)


IMAGE = LuoImage(3, [SessionImage(b"vm", [FileImage("memfd-v2", 0x42, 7)])])


def _old_kernel(memory):
    handover = Handover(memory)
    handover.add_subtree("LUO", write_luo(memory, handover.preserved, IMAGE))
    handover.add_subtree("memblock", _memblock_fdt())
    return handover


def test_subtrees_are_copied_into_preserved_pages(memory):
    handover = Handover(memory)
    blob = _memblock_fdt()
    phys = handover.add_subtree("memblock", blob + bytes(50))   # the padding is not copied
    assert memory.read(phys, len(blob)) == blob
    assert handover.preserved.covers(phys, len(blob))
    assert handover.subtrees == {"memblock": blob}


def test_root_blob_before_finalize_has_no_map(memory):
    handover = _old_kernel(memory)
    root = parse_root(handover.root_blob)
    assert root.mem_map_phys == 0
    assert list(root.subtrees) == ["LUO", "memblock"]


def test_subtree_errors(memory):
    handover = Handover(memory)
    handover.add_subtree("LUO", _memblock_fdt())
    with pytest.raises(FileExistsError) as info:
        handover.add_subtree("LUO", _memblock_fdt())
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FileNotFoundError) as info:
        handover.remove_subtree("nope")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(KhoFormatError, match="KHO subtree 'x': bad FDT magic"):
        handover.add_subtree("x", b"\0" * 64)
    with pytest.raises(ValueError, match="not a valid FDT node name"):
        handover.add_subtree("a/b", _memblock_fdt())


def test_remove_subtree_releases_its_pages(memory):
    handover = Handover(memory)
    free_before = memory.free_page_count
    handover.add_subtree("memblock", _memblock_fdt())
    handover.remove_subtree("memblock")
    assert memory.free_page_count == free_before and len(handover.preserved) == 0
    assert handover.subtrees == {}


def test_finalize_writes_a_root_that_describes_itself(memory, dtc_decode):
    handover = _old_kernel(memory)
    root_phys, root_size = handover.finalize()
    blob = memory.read(root_phys, root_size)
    assert blob == handover.root_blob
    root = parse_root(blob)
    assert root.mem_map_phys != 0
    assert handover.preserved.covers(root_phys, root_size)
    restored = PreservedMemory.deserialize(memory, root.mem_map_phys)
    assert restored == handover.preserved
    assert "LUO {" in dtc_decode(blob)
    for subtree in handover.subtrees.values():
        dtc_decode(subtree)


def test_finalized_handover_refuses_changes_with_ebusy(memory):
    handover = _old_kernel(memory)
    handover.finalize()
    for change in (lambda: handover.add_subtree("new", _memblock_fdt()),
                   lambda: handover.remove_subtree("LUO"),
                   lambda: handover.preserved.preserve(0x100000, PAGE_SIZE)):
        with pytest.raises(OSError) as info:
            change()
        assert info.value.errno == errno.EBUSY
    with pytest.raises(FileExistsError):
        handover.finalize()


def test_abort_undoes_finalize(memory):
    handover = _old_kernel(memory)
    free_before, blocks_before = memory.free_page_count, list(handover.preserved)
    handover.finalize()
    handover.abort()
    assert memory.free_page_count == free_before
    assert list(handover.preserved) == blocks_before and not handover.finalized
    assert parse_root(handover.root_blob).mem_map_phys == 0
    handover.add_subtree("later", _memblock_fdt())
    with pytest.raises(FileNotFoundError):
        Handover(memory).abort()


def test_failed_finalize_leaves_nothing_behind():
    with PhysicalMemory(8 * PAGE_SIZE) as small:
        handover = Handover(small)
        handover.add_subtree("memblock", _memblock_fdt())
        small.alloc_pages(small.free_page_count - 2)   # room for the root and one map page
        blocks_before = list(handover.preserved)
        with pytest.raises(OutOfPhysicalMemory):
            handover.finalize()                        # the map needs chunk + bitmap
        assert small.free_page_count == 2
        assert list(handover.preserved) == blocks_before
        assert not handover.finalized and not handover.preserved.frozen


def test_kexec_hands_everything_to_the_next_kernel(memory):
    handover = _old_kernel(memory)
    handover.preserved.preserve(0x200000, 0x10000)       # some user's own pages
    root_phys, root_size = handover.finalize()

    with PhysicalMemory.adopt(os.dup(memory.fd)) as ram:
        incoming = IncomingHandover.load(ram, root_phys, root_size)
        assert incoming.root_blob == handover.root_blob
        assert incoming.subtrees == handover.subtrees
        assert incoming.subtree_phys == parse_root(incoming.root_blob).subtrees
        assert incoming.preserved == handover.preserved
        # every preserved page is reserved: allocating all free RAM never hits one; nor
        # a page of the memory map, so a kernel that dies before it serves leaves the
        # hand-over as the old kernel wrote it (issue 12 §3)
        map_pages = mem_map_pages(ram, parse_root(incoming.root_blob).mem_map_phys)
        assert map_pages
        taken = [ram.alloc_pages(1) for _ in range(ram.free_page_count)]
        assert not any(incoming.preserved.covers(page, PAGE_SIZE) for page in taken)
        assert not set(taken) & set(map_pages)
        for page in taken:
            ram.free_pages(page, 1)

        assert read_luo(ram, incoming.subtrees["LUO"]) == IMAGE
        free_before = ram.free_page_count
        incoming.release()
        assert ram.free_page_count == free_before + 1 + 2   # root, subtrees
        # the user's 16 pages, LUO's 3 blocks and the map stay reserved for this
        # kernel's life
        assert ram.free_page_count == ram.size // PAGE_SIZE - 1 - 16 - 3 - len(map_pages)


def test_load_in_a_new_process(memory):
    handover = _old_kernel(memory)
    root_phys, root_size = handover.finalize()
    child = ("import json, sys; from kho import PhysicalMemory, IncomingHandover, read_luo;"
             "ram = PhysicalMemory.adopt(int(sys.argv[1]));"
             "h = IncomingHandover.load(ram, int(sys.argv[2]), int(sys.argv[3]));"
             "image = read_luo(ram, h.subtrees['LUO']);"
             "print(json.dumps([sorted(h.subtrees), image.liveupdate_number,"
             " image.sessions[0].files[0].token]))")
    result = subprocess.run([sys.executable, "-c", child, str(memory.fd), str(root_phys),
                             str(root_size)], pass_fds=[memory.fd], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == [["LUO", "memblock"], 3, 7]


# -- what a broken previous kernel may leave ----------------------------------------------

def _incoming(memory, subtrees, preserve_root=True, preserve_subtrees=True):
    """Hand-build a handover whose subtrees point wherever the test says."""
    preserved = PreservedMemory()
    root_phys = memory.alloc_pages(1)
    if preserve_root:
        preserved.preserve(root_phys, PAGE_SIZE)
    for phys in subtrees.values():
        if preserve_subtrees and 0 < phys < memory.size:
            preserved.preserve(phys - phys % PAGE_SIZE, PAGE_SIZE)
    blob = build_root(preserved.serialize(memory), subtrees)
    memory.write(root_phys, blob)
    return root_phys, len(blob)


def _fdt_at(memory, blob):
    phys = memory.alloc_pages(1)
    memory.write(phys, blob)
    return phys


def test_load_rejects_a_root_outside_memory(memory):
    with pytest.raises(KhoFormatError, match="KHO root: 4096 bytes at 0x4000000 lie outside"):
        IncomingHandover.load(memory, memory.size, PAGE_SIZE)


def test_load_rejects_a_short_root_size(memory):
    root_phys, size = _incoming(memory, {})
    with pytest.raises(KhoFormatError, match=f"KHO root: FDT totalsize {size} does not fit the 64"):
        IncomingHandover.load(memory, root_phys, 64)


def test_load_rejects_an_unpreserved_root(memory):
    root_phys, size = _incoming(memory, {"memblock": _fdt_at(memory, _memblock_fdt())},
                                preserve_root=False)
    with pytest.raises(KhoFormatError, match=f"KHO root at {root_phys:#x} .* is not in preserved memory"):
        IncomingHandover.load(memory, root_phys, size)


def test_load_rejects_an_unpreserved_subtree(memory):
    phys = _fdt_at(memory, _memblock_fdt())
    root_phys, size = _incoming(memory, {"memblock": phys}, preserve_subtrees=False)
    with pytest.raises(KhoFormatError, match=f"KHO subtree 'memblock' at {phys:#x} .* is not in preserved memory"):
        IncomingHandover.load(memory, root_phys, size)


@pytest.mark.parametrize("subtree, message", [
    (lambda m: 0, "KHO subtree 'LUO': address is 0 \\(none\\)"),
    (lambda m: 1 << 40, "KHO subtree 'LUO': 40 bytes at 0x10000000000 lie outside"),
    (lambda m: _fdt_at(m, b"\xde\xad" * 30), "KHO subtree 'LUO': bad FDT magic 0xdeaddead"),
    (lambda m: _fdt_at(m, _memblock_fdt()[:4] + (1 << 30).to_bytes(4, "big") + _memblock_fdt()[8:]),
     "KHO subtree 'LUO': 1073741824 bytes at 0x[0-9a-f]+ lie outside physical memory"),
    (lambda m: _fdt_at(m, _memblock_fdt()[:4] + (20).to_bytes(4, "big") + _memblock_fdt()[8:]),
     "KHO subtree 'LUO': 20 bytes, shorter than the 40-byte FDT header"),
])
def test_load_rejects_bad_subtrees(memory, subtree, message):
    root_phys, size = _incoming(memory, {"LUO": subtree(memory)})
    with pytest.raises(KhoFormatError, match=message):
        IncomingHandover.load(memory, root_phys, size)
