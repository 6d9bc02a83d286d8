import struct

import fdt
import pytest
from hypothesis import given, strategies as st

from kho.errors import KhoFormatError
from kho.fdt_blob import (FDT_HEADER_SIZE, FdtHeader, check_compatible, fdt_totalsize, get_u64,
                          new_node, new_tree, parse_fdt, raw_value, to_blob, u64_prop)


def _tree_with(value: bytes) -> bytes:
    tree = new_tree("test-v1")
    tree.root.append(fdt.PropBytes("value", data=value) if value else fdt.Property("value"))
    return to_blob(tree)


def test_header_round_trips_byte_exact():
    blob = to_blob(new_tree("test-v1"))
    header = blob[:FDT_HEADER_SIZE]
    assert FdtHeader.sizeof() == 40
    assert FdtHeader.build(FdtHeader.parse(header)) == header
    parsed = FdtHeader.parse(header)
    assert (parsed.magic, parsed.version, parsed.last_comp_version) == (0xD00DFEED, 17, 16)
    assert parsed.totalsize == len(blob)


@given(st.binary(min_size=1, max_size=24))
def test_raw_values_survive_the_libraries_type_guessing(value):
    # the fdt library turns printable bytes into strings and 4-byte multiples
    # into big-endian words; the exact bytes must still come back
    node = parse_fdt(_tree_with(value), "test").root
    assert raw_value(node.get_property("value")) == value


def test_raw_value_of_an_empty_property():
    node = parse_fdt(_tree_with(b""), "test").root
    assert raw_value(node.get_property("value")) == b""


def test_u64_values_are_little_endian():
    tree = new_tree("test-v1")
    tree.root.append(u64_prop("addr", 0x1234000))
    blob = to_blob(tree)
    assert struct.pack("<Q", 0x1234000) in blob
    assert get_u64(parse_fdt(blob, "test").root, "addr", "test") == 0x1234000


def test_u64_range_and_names_are_checked():
    with pytest.raises(ValueError, match="is not a u64"):
        u64_prop("x", 1 << 64)
    with pytest.raises(ValueError, match="is not a u64"):
        u64_prop("x", -1)
    with pytest.raises(ValueError, match="not a valid FDT property name"):
        u64_prop("bad name", 1)
    with pytest.raises(ValueError, match="not a valid FDT node name"):
        new_node("LUO@1")
    with pytest.raises(ValueError, match="not a valid FDT node name"):
        new_node("")


@pytest.mark.parametrize("value, message", [
    (None, "test: property 'addr' is missing"),
    (b"\1\2\3\4", "test: property 'addr' is 4 bytes, expected 8"),
])
def test_get_u64_errors(value, message):
    tree = new_tree("test-v1")
    if value is not None:
        tree.root.append(fdt.PropBytes("addr", data=value))
    with pytest.raises(KhoFormatError, match=message):
        get_u64(parse_fdt(to_blob(tree), "test").root, "addr", "test")


def test_compatible_lists_are_searched():
    tree = new_tree("x")
    tree.root.remove_property("compatible")
    tree.root.append(fdt.PropStrings("compatible", "vendor,thing-v2", "thing-v1"))
    check_compatible(parse_fdt(to_blob(tree), "t").root, "thing-v1", "t")
    with pytest.raises(KhoFormatError, match="t: compatible is 'vendor,thing-v2', 'thing-v1', expected 'thing-v3'"):
        check_compatible(parse_fdt(to_blob(tree), "t").root, "thing-v3", "t")


def test_compatible_must_be_a_terminated_string():
    tree = new_tree("x")
    tree.root.remove_property("compatible")
    tree.root.append(fdt.PropBytes("compatible", data=b"kho-v1"))
    with pytest.raises(KhoFormatError, match="compatible b'kho-v1' is not NUL-terminated"):
        check_compatible(parse_fdt(to_blob(tree), "t").root, "kho-v1", "t")


def _patch_header(blob: bytes, **fields) -> bytes:
    header = dict(FdtHeader.parse(blob))
    header.pop("_io", None)
    header.update(fields)
    return FdtHeader.build(header) + blob[FDT_HEADER_SIZE:]


BLOB = to_blob(new_tree("test-v1"))


@pytest.mark.parametrize("blob, message", [
    (BLOB[:39], "x: 39 bytes, shorter than the 40-byte FDT header"),
    (b"\0" + BLOB[1:], "x: bad FDT magic 0x000dfeed, expected 0xd00dfeed"),
    (BLOB[:-1], f"x: FDT totalsize {len(BLOB)} does not fit the {len(BLOB) - 1} bytes available"),
    (_patch_header(BLOB, version=16), r"x: FDT version 16 \(last compatible 16\) is not supported"),
    (_patch_header(BLOB, last_comp_version=18), r"FDT version 17 \(last compatible 18\)"),
    (_patch_header(BLOB, totalsize=8), "x: FDT totalsize 8 does not fit"),
    (_patch_header(BLOB, size_dt_struct=1000), r"x: FDT structure block \[56, 1056\) lies outside the tree"),
    (_patch_header(BLOB, off_dt_strings=4), r"x: FDT strings block \[4, "),
    (_patch_header(BLOB, off_mem_rsvmap=len(BLOB) - 8), "x: FDT memory reservation block"),
])
def test_bad_headers(blob, message):
    with pytest.raises(KhoFormatError, match=message):
        parse_fdt(blob, "x")


def test_trailing_bytes_after_totalsize_are_ignored():
    assert fdt_totalsize(BLOB + bytes(100), "x") == len(BLOB)
    assert parse_fdt(BLOB + b"\xff" * 100, "x").root.get_property("compatible").value == "test-v1"


def test_damaged_structure_block():
    start = FdtHeader.parse(BLOB).off_dt_struct
    broken = BLOB[:start] + struct.pack(">I", 7) + BLOB[start + 4:]
    with pytest.raises(KhoFormatError, match="x: malformed FDT structure block: Unknown Tag: 7"):
        parse_fdt(broken, "x")


def test_tree_without_a_root_node():
    start = FdtHeader.parse(BLOB).off_dt_struct
    empty = BLOB[:start] + struct.pack(">I", 9) + BLOB[start + 4:]
    with pytest.raises(KhoFormatError, match="x: FDT has no root node"):
        parse_fdt(empty, "x")


def test_reservations_of_a_parsed_blob_never_leak_into_new_trees():
    """fdt.FDT shares one default `entries` list between trees; parse_dtb fills it."""
    tree = fdt.FDT(entries=[{"address": 0x1000, "size": 0x2000}])
    tree.root = fdt.Node("/")
    parse_fdt(tree.to_dtb(version=17), "with a reservation")  # pollutes the shared default
    blob = to_blob(new_tree("kho-v1"))
    (off_dt_struct,) = struct.unpack_from(">I", blob, 8)
    (off_mem_rsvmap,) = struct.unpack_from(">I", blob, 16)
    assert off_dt_struct - off_mem_rsvmap == 16  # only the terminating empty reservation
