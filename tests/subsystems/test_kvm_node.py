"""luofs/subsystems/kvm_node.py: the kvm subsystem's KHO node round-trips byte-exact,
dtc decodes it, and damage is a clean KhoFormatError."""

import shutil
import subprocess

import fdt
import pytest
from hypothesis import given, settings, strategies as st

from kho.errors import KhoFormatError
from kho.fdt_blob import new_node, new_tree, to_blob, u64_prop
from luofs.subsystems import kvm_node
from luofs.subsystems.kvm_node import VmDescription, decode, encode

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789,._+-", min_size=1, max_size=63)
TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               max_size=20)
U64 = st.integers(0, 2**64 - 1)


@st.composite
def vms(draw):
    names = draw(st.lists(NAMES, unique=True, max_size=4))
    tokens = iter(range(0, 2 * len(names)))
    return [VmDescription(name, draw(U64), draw(U64), next(tokens), next(tokens), draw(TEXT),
                          tuple(draw(st.lists(TEXT, max_size=4)))) for name in names]


@settings(max_examples=60, deadline=None)
@given(vms())
def test_round_trip(descriptions):
    blob = encode(descriptions)
    assert decode(blob) == descriptions
    assert encode(decode(blob)) == blob


@pytest.mark.skipif(not shutil.which("dtc"), reason="dtc (device-tree-compiler) is missing")
def test_dtc_decodes_it():
    blob = encode([VmDescription("vm0", 64 << 20, 218_000, 0, 1, "tcg", ("-rtc", "base=utc"))])
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", "-"], input=blob,
                         capture_output=True, check=True).stdout.decode()
    assert 'compatible = "luofs,kvm-v1";' in dts and "vm0 {" in dts
    assert 'accel = "tcg";' in dts and 'qemu-args = "-rtc\\0base=utc";' in dts


def _node(name="vm0", **props):
    tree = new_tree(kvm_node.COMPATIBLE)
    node = new_node(name, kvm_node.VM_COMPATIBLE)
    values = {"ram-size": 1, "state-size": 2, "ram-token": 0, "state-token": 1}
    values.update({k: v for k, v in props.items() if isinstance(v, int)})
    for prop, value in values.items():
        if props.get(prop, 0) is not None:
            node.append(u64_prop(prop, value))
    for prop in ("accel", "qemu-args"):
        raw = props.get(prop, b"tcg\0" if prop == "accel" else b"")
        if raw is not None:
            node.append(fdt.PropBytes(prop, data=raw))
    tree.root.append(node)
    return to_blob(tree)


@pytest.mark.parametrize("blob,error", [
    (_node(), None),
    (_node(**{"ram-token": None}), "property 'ram-token' is missing"),
    (_node(**{"state-token": 0}), "a token is named twice"),
    (_node(accel=b"tcg"), "accel is not NUL-terminated"),
    (_node(accel=b"tcg\0kvm\0"), "accel holds 2 strings, not 1"),
    (_node(**{"qemu-args": b"\xff\0"}), "qemu-args is not UTF-8"),
    (to_blob(new_tree("luofs,kvm-v0")), "compatible is 'luofs,kvm-v0', expected 'luofs,kvm-v1'"),
    (b"\0" * 64, "bad FDT magic"),
])
def test_damage_is_a_format_error(blob, error):
    if error is None:
        assert decode(blob) == [VmDescription("vm0", 1, 2, 0, 1, "tcg", ())]
        return
    with pytest.raises(KhoFormatError, match=error.replace("(", r"\(")):
        decode(blob)


def test_two_vms_may_not_share_a_token():
    a = VmDescription("a", 1, 1, 0, 1, "tcg")
    b = VmDescription("b", 1, 1, 2, 1, "tcg")
    with pytest.raises(KhoFormatError, match="VM b: a token is named twice"):
        decode(encode([a, b]))


@pytest.mark.parametrize("name", ["", "a@b", "x" * 64, "sp ace"])
def test_a_name_that_cannot_name_a_node_is_refused(name):
    with pytest.raises(ValueError):
        encode([VmDescription(name, 1, 1, 0, 1, "tcg")])


def test_a_nul_in_a_string_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        encode([VmDescription("vm0", 1, 1, 0, 1, "tcg", ("a\0b",))])
