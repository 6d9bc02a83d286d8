import errno
import struct

import pytest
from construct import Array
from hypothesis import HealthCheck, given, settings, strategies as st

from kho.errors import KhoFormatError
from kho.fdt_blob import get_u64, parse_fdt, to_blob
from kho.luo_format import LuoFileSer, LuoFlbBlock, LuoSessionBlock
from kho.handover import Handover
from kho.luo_image import (LUO_SUBTREE, FileImage, FlbImage, LuoImage, SessionImage, publish_luo,
                           read_luo, release_luo, write_luo)
from kho.memory import PAGE_SIZE, OutOfPhysicalMemory, PhysicalMemory
from kho.preserve import PreservedMemory

IMAGE = LuoImage(
    liveupdate_number=7,
    sessions=[SessionImage(b"vm-1", [FileImage("memfd-v2", 0x5000, 1), FileImage("memfd-v2", 0x6000, 0)]),
              SessionImage(b"empty"),
              SessionImage(b"vm-2", [FileImage("iommufd-v1", 3, 2**64 - 1)])],
    flbs=[FlbImage("iommu-core-v1", 0x9000, 2)],
    subsystems={"kvm": 0x1234, "vfio,pci": 0},
)

MAINLINE_DTS = """\
/dts-v1/;

/ {
	compatible = "luo-v1";
	liveupdate-number = <0x7000000 0x00>;

	luo-session {
		compatible = "luo-session-v2";
		luo-session-header = <%s 0x00>;
	};

	luo-flb {
		compatible = "luo-flb-v1";
		luo-flb-header = <%s 0x00>;
	};
};
"""


def _swapped(phys):
    """How dtc shows the low half of a little-endian u64."""
    return hex(struct.unpack(">I", struct.pack("<I", phys & 0xFFFFFFFF))[0])


def _headers(blob):
    root = parse_fdt(blob, "test").root
    return (get_u64(root.get_subnode("luo-session"), "luo-session-header", "test"),
            get_u64(root.get_subnode("luo-flb"), "luo-flb-header", "test"))


def test_round_trip_keeps_order_and_values(memory):
    preserved = PreservedMemory()
    blob = write_luo(memory, preserved, IMAGE)
    assert read_luo(memory, blob) == IMAGE


def test_blocks_are_byte_identical_to_the_construct_definitions(memory):
    blob = write_luo(memory, PreservedMemory(), IMAGE)
    session_phys, flb_phys = _headers(blob)
    session_block = memory.read(session_phys, 8 + 3 * 80)
    sessions = LuoSessionBlock.parse(session_block).sessions
    files_phys = sessions[0].file_set_ser.files
    assert [s.file_set_ser.count for s in sessions] == [2, 0, 1]
    assert sessions[1].file_set_ser.files == 0
    assert sessions[2].file_set_ser.files == files_phys + 2 * 64   # one shared block
    expected_sessions = LuoSessionBlock.build(dict(sessions=[
        dict(name=name.ljust(64, b"\0"), file_set_ser=dict(files=files, count=count))
        for name, files, count in ((b"vm-1", files_phys, 2), (b"empty", 0, 0),
                                   (b"vm-2", files_phys + 128, 1))]))
    assert session_block == expected_sessions
    assert memory.read(files_phys, 3 * 64) == Array(3, LuoFileSer).build([
        dict(compatible=b"memfd-v2".ljust(48, b"\0"), data=0x5000, token=1),
        dict(compatible=b"memfd-v2".ljust(48, b"\0"), data=0x6000, token=0),
        dict(compatible=b"iommufd-v1".ljust(48, b"\0"), data=3, token=2**64 - 1)])
    assert memory.read(flb_phys, PAGE_SIZE) == LuoFlbBlock.build(dict(flbs=[
        dict(name=b"iommu-core-v1".ljust(48, b"\0"), data=0x9000, count=2)]))


def test_mainline_image_has_exactly_the_kernel_layout(memory, dtc_decode):
    blob = write_luo(memory, PreservedMemory(), LuoImage(7))
    session_phys, flb_phys = _headers(blob)
    assert dtc_decode(blob) == MAINLINE_DTS % (_swapped(session_phys), _swapped(flb_phys))


def test_subsystems_node_decodes_with_dtc(memory, dtc_decode):
    text = dtc_decode(write_luo(memory, PreservedMemory(), IMAGE))
    assert 'luo-subsystems {\n\t\tcompatible = "luo-subsystems-v1";' in text
    assert "kvm = <0x34120000 0x00>;" in text


def test_every_block_is_preserved_and_release_undoes_everything(memory):
    preserved = PreservedMemory()
    free_before = memory.free_page_count
    blob = write_luo(memory, preserved, IMAGE)
    session_phys, flb_phys = _headers(blob)
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
    session_phys, flb_phys = _headers(blob)
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
    _, flb_phys = _headers(blob)
    memory.write(flb_phys + 16 + 64, b"a\0")
    with pytest.raises(KhoFormatError, match="LUO: FLB block: FLB 'a' appears twice"):
        read_luo(memory, blob)


def test_foreign_layouts_with_separate_arrays_are_read(memory):
    """The kernel gives each session its own file block, in any order."""
    blob = write_luo(memory, PreservedMemory(), LuoImage(4, [SessionImage(b"a"), SessionImage(b"b"),
                                                             SessionImage(b"c")]))
    session_phys, _ = _headers(blob)
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


# -- properties and scale -----------------------------------------------------------------

u64 = st.integers(0, 2**64 - 1)
compatibles = st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=47)
files = st.lists(st.builds(FileImage, compatibles, u64, u64), max_size=6,
                 unique_by=lambda file: file.token)
session_lists = st.lists(st.builds(SessionImage, st.binary(max_size=63).filter(lambda n: b"\0" not in n),
                                   files), max_size=8, unique_by=lambda session: session.name)
images = st.builds(LuoImage, u64, session_lists,
                   st.lists(st.builds(FlbImage, compatibles, u64, u64), max_size=4,
                            unique_by=lambda flb: flb.name),
                   st.dictionaries(st.text("abcxyz0129,._+*#?-", min_size=1, max_size=12)
                                   .filter(lambda n: n != "compatible"), u64, max_size=4))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images)
def test_random_images_round_trip(memory, image):
    # the fixture is shared across examples on purpose: release must return
    # every page, or later examples run out of memory and the count below fails
    preserved = PreservedMemory()
    free_before = memory.free_page_count
    blob = write_luo(memory, preserved, image)
    assert read_luo(memory, blob) == image
    release_luo(memory, blob, preserved)
    assert memory.free_page_count == free_before and len(preserved) == 0


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images)
def test_any_luo_tree_decodes_with_dtc(memory, dtc_decode, image):
    preserved = PreservedMemory()
    blob = write_luo(memory, preserved, image)
    text = dtc_decode(blob)
    assert all(f"\t\t{name} = " in text for name in image.subsystems)
    release_luo(memory, blob, preserved)


def _scale_image(sessions=10_000, files=10):
    return LuoImage(42, [SessionImage(b"session-%05d" % s,
                                      [FileImage("memfd-v2", s * 100 + f, f) for f in range(files)])
                         for s in range(sessions)])


def test_ten_thousand_sessions_of_ten_files_round_trip():
    image = _scale_image()
    with PhysicalMemory(64 << 20) as memory:
        preserved = PreservedMemory()
        blob = write_luo(memory, preserved, image)
        back = read_luo(memory, blob)
        assert back == image
        assert back.sessions[9_999].files[9] == FileImage("memfd-v2", 999_909, 9)
        # the 100,000 records lie in one preserved block of whole pages
        assert preserved.covers(*_headers(blob)[:1], 8 + 80 * 10_000)


if __name__ == "__main__":
    import time
    image = _scale_image()
    with PhysicalMemory(64 << 20) as ram:
        for _ in range(3):
            start = time.perf_counter()
            preserved = PreservedMemory()
            luo_fdt = write_luo(ram, preserved, image)
            middle = time.perf_counter()
            read_luo(ram, luo_fdt)
            end = time.perf_counter()
            print(f"10,000 x 10: write {1000 * (middle - start):.1f} ms, read {1000 * (end - middle):.1f} ms")
            release_luo(ram, luo_fdt, preserved)


def test_the_header_counts_what_the_whole_image_holds(memory):
    from kho import read_luo_header

    files = [FileImage("memfd-v2", 1, 1), FileImage("memfd-v2", 2, 2)]
    image = LuoImage(7, [SessionImage(b"a", files), SessionImage(b"b", []),
                         SessionImage(b"c", [FileImage("memfd-v2", 3, 9)])], [], {})
    blob = write_luo(memory, PreservedMemory(), image)
    assert read_luo_header(memory, blob) == (7, 3, 3)
