import pytest
from construct import Bytes, Int16ub, Int32ul, Int64ul, Struct, this

from kho.struct_mirror import array_mirror, struct_mirror


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
