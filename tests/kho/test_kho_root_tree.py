import fdt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kho.errors import KhoFormatError
from kho.fdt_blob import new_node, new_tree, to_blob, u64_prop
from kho.root_tree import KhoRoot, build_root, parse_root

# kho.md §2: the addresses print as byte-swapped cell pairs because they are LE
SPEC_DTS = """\
/ {
	compatible = "kho-v1";
	preserved-memory-map = <0x402301 0x00>;

	LUO {
		fdt = <0x806705 0x00>;
	};

	memblock {
		fdt = <0xc0ab09 0x00>;
	};
};
"""


def test_root_matches_the_spec_dump(dtc_decode):
    blob = build_root(0x1234000, {"LUO": 0x5678000, "memblock": 0x9ABC000})
    assert dtc_decode(blob) == "/dts-v1/;\n\n" + SPEC_DTS


def test_parse_keeps_values_and_order():
    blob = build_root(0x1234000, {"memblock": 0x9ABC000, "LUO": 0x5678000})
    root = parse_root(blob)
    assert root == KhoRoot(0x1234000, {"memblock": 0x9ABC000, "LUO": 0x5678000})
    assert list(root.subtrees) == ["memblock", "LUO"]


names = st.text(st.sampled_from("abcXYZ019,._+-"), min_size=1, max_size=20)


@given(st.integers(0, 2**64 - 1), st.dictionaries(names, st.integers(0, 2**64 - 1), max_size=8))
def test_round_trip_is_byte_exact(mem_map, subtrees):
    blob = build_root(mem_map, subtrees)
    root = parse_root(blob)
    assert root == KhoRoot(mem_map, subtrees)
    assert build_root(root.mem_map_phys, root.subtrees) == blob


def _root(compatible="kho-v1", mem_map=b"\0" * 8, child=None):
    tree = new_tree(compatible)
    if mem_map is not None:
        tree.root.append(fdt.PropBytes("preserved-memory-map", data=mem_map))
    if child is not None:
        name, prop = child
        node = new_node(name)
        if prop is not None:
            node.append(prop)
        tree.root.append(node)
    return to_blob(tree)


def _twice():
    tree = new_tree("kho-v1")
    tree.root.append(u64_prop("preserved-memory-map", 0))
    for _ in range(2):
        node = fdt.Node("LUO")
        node.append(u64_prop("fdt", 0x1000))
        tree.root._nodes.append(node)  # the library refuses duplicates; a corrupt tree has them
    return to_blob(tree)


GOOD = build_root(0x1000, {"LUO": 0x2000})


@pytest.mark.parametrize("blob, message", [
    (_root(compatible="kho-v9"), "KHO root: compatible is 'kho-v9', expected 'kho-v1'"),
    (_root(mem_map=None), "KHO root: property 'preserved-memory-map' is missing"),
    (_root(mem_map=b"\1\2\3\4"), "KHO root: property 'preserved-memory-map' is 4 bytes, expected 8"),
    (_root(child=("LUO", None)), "KHO root: subtree 'LUO': property 'fdt' is missing"),
    (_root(child=("LUO", fdt.PropBytes("fdt", data=b"\1" * 12))),
     "KHO root: subtree 'LUO': property 'fdt' is 12 bytes, expected 8"),
    (_twice(), "KHO root: malformed FDT structure block: .*\"LUO\" node already exists"),
    (GOOD[:-1], "KHO root: FDT totalsize"),
    (GOOD[:20], "KHO root: 20 bytes, shorter than the 40-byte FDT header"),
    (b"\xd0\x0d\xfe\xee" + GOOD[4:], "KHO root: bad FDT magic 0xd00dfeee"),
])
def test_tampered_roots_are_rejected(blob, message):
    with pytest.raises(KhoFormatError, match=message):
        parse_root(blob)


def test_flipping_any_byte_never_escapes_as_another_error():
    for offset in range(len(GOOD)):
        for flip in (0x01, 0x80):
            blob = bytearray(GOOD)
            blob[offset] ^= flip
            try:
                root = parse_root(bytes(blob))
            except KhoFormatError:
                continue
            # a flip inside a value or a name can still give a valid tree
            assert isinstance(root, KhoRoot)


def test_bad_subtree_names_are_refused_when_building():
    with pytest.raises(ValueError, match="not a valid FDT node name"):
        build_root(0, {"has space": 1})


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**64 - 1), st.dictionaries(names, st.integers(0, 2**64 - 1), max_size=5))
def test_any_root_decodes_with_dtc(dtc_decode, mem_map, subtrees):
    text = dtc_decode(build_root(mem_map, subtrees))
    assert all(f"\t{name} {{" in text for name in subtrees)
