"""kho/luo_read.py: what another kernel left is validated; every inconsistency is named."""

import struct

import pytest

from kho.errors import KhoFormatError
from kho.fdt_blob import parse_fdt, to_blob
from kho.luo_image import FileImage, FlbImage, LuoImage, SessionImage
from kho.luo_read import read_luo, read_luo_header
from kho.luo_write import write_luo
from kho.preserve import PreservedMemory

from .luo_samples import IMAGE, headers


# -- tampering with the FDT ---------------------------------------------------------------

def _edit_tree(blob, edit):
    tree = parse_fdt(blob, "test")
    edit(tree.root)
    return to_blob(tree)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.set_property("compatible", "luo-v2"), "LUO: compatible is 'luo-v2', expected 'luo-v1'"),
    (lambda r: r.remove_property("liveupdate-number"), "LUO: property 'liveupdate-number' is missing"),
    (lambda r: r.set_property("liveupdate-number", b"\1\2"), "LUO: property 'liveupdate-number' is 2 bytes, expected 8"),
    (lambda r: r.remove_subnode("luo-flb"), "LUO: node 'luo-flb' is missing"),
    (lambda r: r.get_subnode("luo-session").set_property("compatible", "luo-session-v1"),
     "LUO: node 'luo-session': compatible is 'luo-session-v1', expected 'luo-session-v2'"),
    (lambda r: r.get_subnode("luo-session").remove_property("luo-session-header"),
     "LUO: node 'luo-session': property 'luo-session-header' is missing"),
    (lambda r: r.get_subnode("luo-session").set_property("luo-session-header", bytes(8)),
     "LUO: session block: address is 0"),
    (lambda r: r.get_subnode("luo-flb").set_property("luo-flb-header", (1 << 40).to_bytes(8, "little")),
     r"LUO: FLB block: 16 bytes at 0x10000000000 lie outside physical memory \(size 0x4000000\)"),
    (lambda r: r.get_subnode("luo-subsystems").set_property("compatible", "subsystems-v1"),
     "LUO: node 'luo-subsystems': compatible is 'subsystems-v1', expected 'luo-subsystems-v1'"),
    (lambda r: r.get_subnode("luo-subsystems").set_property("kvm", b"\0" * 4),
     "LUO: node 'luo-subsystems': property 'kvm' is 4 bytes, expected 8"),
])
def test_tampered_trees_are_rejected(memory, edit, message):
    blob = _edit_tree(write_luo(memory, PreservedMemory(), IMAGE), edit)
    with pytest.raises(KhoFormatError, match=message):
        read_luo(memory, blob)


def test_truncated_tree_is_rejected(memory):
    blob = write_luo(memory, PreservedMemory(), IMAGE)
    with pytest.raises(KhoFormatError, match="LUO: FDT totalsize"):
        read_luo(memory, blob[:-4])


# -- tampering with the blocks ------------------------------------------------------------

def _written(memory):
    blob = write_luo(memory, PreservedMemory(), IMAGE)
    session_phys, flb_phys = headers(blob)
    files_phys = struct.unpack_from("<Q", memory.read(session_phys + 8 + 64, 8))[0]
    return blob, session_phys, flb_phys, files_phys


def _session_field(session_phys, number, offset):
    return session_phys + 8 + 80 * number + offset


@pytest.mark.parametrize("where, data, message", [
    (lambda s, f, x: s, struct.pack("<Q", 1 << 30),
     r"LUO: session block of 1073741824 sessions: 85899345928 bytes at 0x\w+ lie outside physical memory"),
    (lambda s, f, x: _session_field(s, 0, 0), b"x" * 64, "LUO: session 0: name is not NUL-terminated within 64 bytes"),
    (lambda s, f, x: _session_field(s, 2, 0), b"vm-1\0", "LUO: session 'vm-1' appears twice"),
    (lambda s, f, x: _session_field(s, 0, 64), bytes(8), r"LUO: session 'vm-1' has 2 files but no file array \(address 0\)"),
    (lambda s, f, x: _session_field(s, 2, 64), struct.pack("<Q", 1 << 40), "LUO: 1 file records from session 'vm-2' on: 64 bytes at 0x10000000000 lie outside"),
    (lambda s, f, x: _session_field(s, 2, 72), struct.pack("<Q", 1 << 60), "LUO: 1152921504606846978 file records from session 'vm-1' on: 73786976294838206592 bytes"),
    (lambda s, f, x: x + 64 * 2, b"y" * 48, "LUO: session 'vm-2' file 0: compatible is not NUL-terminated within 48 bytes"),
    (lambda s, f, x: x + 64, b"\0", "LUO: session 'vm-1' file 1: compatible is empty"),
    (lambda s, f, x: x + 64, b"\xff", r"LUO: session 'vm-1' file 1: compatible b'\\xffemfd-v2' is not ASCII"),
    (lambda s, f, x: x + 56, struct.pack("<Q", 0), "LUO: session 'vm-1': token 0x0 appears twice"),
    (lambda s, f, x: f, struct.pack("<QQ", 1, 64), "LUO: FLB block: 64 entries need 4112 bytes, but pgcnt 1 holds 4096"),
    (lambda s, f, x: f, struct.pack("<QQ", 0, 0), "LUO: FLB block: 0 entries need 16 bytes, but pgcnt 0 holds 0"),
    (lambda s, f, x: f, struct.pack("<QQ", 1 << 20, 1), "LUO: FLB block: 4294967296 bytes at .* lie outside"),
    (lambda s, f, x: f + 16, b"z" * 48, "LUO: FLB block entry 0: name is not NUL-terminated within 48 bytes"),
    (lambda s, f, x: f + 8, struct.pack("<Q", 2), "LUO: FLB block entry 1: name is empty"),
])
def test_tampered_blocks_are_rejected(memory, where, data, message):
    blob, session_phys, flb_phys, files_phys = _written(memory)
    memory.write(where(session_phys, flb_phys, files_phys), data)
    with pytest.raises(KhoFormatError, match=message):
        read_luo(memory, blob)


def test_duplicate_flb_names_are_rejected(memory):
    blob = write_luo(memory, PreservedMemory(), LuoImage(1, flbs=[FlbImage("a", 1, 1), FlbImage("b", 2, 2)]))
    _, flb_phys = headers(blob)
    memory.write(flb_phys + 16 + 64, b"a\0")
    with pytest.raises(KhoFormatError, match="LUO: FLB block: FLB 'a' appears twice"):
        read_luo(memory, blob)


def test_foreign_layouts_with_separate_arrays_are_read(memory):
    """The kernel gives each session its own file block, in any order."""
    blob = write_luo(memory, PreservedMemory(), LuoImage(4, [SessionImage(b"a"), SessionImage(b"b"),
                                                             SessionImage(b"c")]))
    session_phys, _ = headers(blob)
    second, first = memory.alloc_pages(1), memory.alloc_pages(1)
    file = struct.Struct("<48sQQ")
    memory.write(first, file.pack(b"memfd-v1", 1, 10) + file.pack(b"memfd-v1", 2, 11))
    memory.write(second, file.pack(b"other-v1", 3, 12))
    memory.write(_session_field(session_phys, 0, 64), struct.pack("<QQ", first, 2))
    memory.write(_session_field(session_phys, 1, 64), struct.pack("<QQ", 0x7000, 0))  # G1: block, no files
    memory.write(_session_field(session_phys, 2, 64), struct.pack("<QQ", second, 1))
    assert read_luo(memory, blob).sessions == [
        SessionImage(b"a", [FileImage("memfd-v1", 1, 10), FileImage("memfd-v1", 2, 11)]),
        SessionImage(b"b"),
        SessionImage(b"c", [FileImage("other-v1", 3, 12)])]


def test_the_header_counts_what_the_whole_image_holds(memory):
    files = [FileImage("memfd-v2", 1, 1), FileImage("memfd-v2", 2, 2)]
    image = LuoImage(7, [SessionImage(b"a", files), SessionImage(b"b", []),
                         SessionImage(b"c", [FileImage("memfd-v2", 3, 9)])], [], {})
    blob = write_luo(memory, PreservedMemory(), image)
    assert read_luo_header(memory, blob) == (7, 3, 3)
