"""LUO's subtree as a whole: images round-trip through kho/luo_write.py and kho/luo_read.py
byte-identical to the kernel's layout, at any size."""

import struct

from construct import Array
from hypothesis import HealthCheck, given, settings, strategies as st

from kho.luo_format import LuoFileSer, LuoFlbBlock, LuoSessionBlock
from kho.luo_image import FileImage, FlbImage, LuoImage, SessionImage
from kho.luo_read import read_luo
from kho.luo_write import release_luo, write_luo
from kho.memory import PAGE_SIZE, PhysicalMemory
from kho.preserve import PreservedMemory

from .luo_samples import IMAGE, headers

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


def test_round_trip_keeps_order_and_values(memory):
    preserved = PreservedMemory()
    blob = write_luo(memory, preserved, IMAGE)
    assert read_luo(memory, blob) == IMAGE


def test_blocks_are_byte_identical_to_the_construct_definitions(memory):
    blob = write_luo(memory, PreservedMemory(), IMAGE)
    session_phys, flb_phys = headers(blob)
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
    session_phys, flb_phys = headers(blob)
    assert dtc_decode(blob) == MAINLINE_DTS % (_swapped(session_phys), _swapped(flb_phys))


def test_subsystems_node_decodes_with_dtc(memory, dtc_decode):
    text = dtc_decode(write_luo(memory, PreservedMemory(), IMAGE))
    assert 'luo-subsystems {\n\t\tcompatible = "luo-subsystems-v1";' in text
    assert "kvm = <0x34120000 0x00>;" in text


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
        assert preserved.covers(*headers(blob)[:1], 8 + 80 * 10_000)


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
