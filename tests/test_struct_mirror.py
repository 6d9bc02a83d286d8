"""struct_mirror: struct formats derived from construct definitions, a leaf every layer uses."""

import subprocess
import sys
from pathlib import Path

import pytest
from construct import Bytes, Int16ub, Int32sl, Int32ul, Int64ul, Struct, Terminated, this

from struct_mirror import array_mirror, field_formats, struct_mirror

REPO = Path(__file__).resolve().parents[1]


def test_nested_fixed_fields_become_one_packed_format():
    inner = Struct("x" / Int32ul, "y" / Int64ul)
    outer = Struct("name" / Bytes(5), "inner" / inner, "z" / Int64ul)
    mirror = struct_mirror(outer)
    assert mirror.format == "<5sLQQ"
    assert mirror.size == outer.sizeof() == 25
    value = dict(name=b"abcde", inner=dict(x=7, y=2**63), z=1)
    assert mirror.pack(b"abcde", 7, 2**63, 1) == outer.build(value)


def test_arrays_repeat_the_record():
    record = struct_mirror(Struct("a" / Int32ul, "b" / Bytes(2)))
    array = array_mirror(record, 3)
    assert array.size == 18
    assert array.unpack(array.pack(1, b"xy", 2, b"zz", 3, b"ab")) == (1, b"xy", 2, b"zz", 3, b"ab")


@pytest.mark.parametrize("definition", [
    Struct("big" / Int16ub),
    Struct("n" / Int32ul, "data" / Bytes(this.n)),
])
def test_layouts_struct_cannot_express_are_refused(definition):
    with pytest.raises(TypeError, match="no fixed little-endian struct format"):
        struct_mirror(definition)


def test_terminated_adds_no_bytes_and_no_field():
    definition = Struct("size" / Int32ul, "fd" / Int32sl, "name" / Bytes(8), Terminated)
    assert field_formats(definition) == [("size", "L"), ("fd", "l"), ("name", "8s")]
    assert struct_mirror(definition).size == 16


def test_it_is_a_leaf_over_construct():
    code = ("import sys; before = set(sys.modules); import struct_mirror;"
            "new = {name.split('.')[0] for name in set(sys.modules) - before};"
            "print(' '.join(sorted(new - set(sys.stdlib_module_names))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                            capture_output=True, text=True)
    assert set(result.stdout.split()) == {"struct_mirror", "construct"}
