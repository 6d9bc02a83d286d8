"""luofs/uapi/structs.py: the ioctl argument structs of spec §3, byte for byte.

Each construct definition is the reference; structs.codec() derives the `struct`
codec the per-ioctl path uses, and the two must agree on every byte.
"""

from struct import error as struct_error

import pytest
from construct import ConstructError, StreamError, TerminatedError
from hypothesis import given, strategies as st

from luofs.uapi import structs

SIZES = [
    ("CreateSession", 72), ("RetrieveSession", 72), ("PreserveFd", 16),
    ("RetrieveFd", 16), ("Finish", 8), ("GetName", 72),
]

# spec §3: (field, offset, width, signed) for every field, in order.
LAYOUTS = {
    "CreateSession": [("size", 0, 4, False), ("fd", 4, 4, True), ("name", 8, 64, None)],
    "RetrieveSession": [("size", 0, 4, False), ("fd", 4, 4, True), ("name", 8, 64, None)],
    "PreserveFd": [("size", 0, 4, False), ("fd", 4, 4, True), ("token", 8, 8, False)],
    "RetrieveFd": [("size", 0, 4, False), ("fd", 4, 4, True), ("token", 8, 8, False)],
    "Finish": [("size", 0, 4, False), ("reserved", 4, 4, False)],
    "GetName": [("size", 0, 4, False), ("reserved", 4, 4, False), ("name", 8, 64, None)],
}
FIELDS = [(s, *f) for s, fields in LAYOUTS.items() for f in fields]



def _zero(layout):
    return {name: bytes(width) if signed is None else 0 for name, _, width, signed in layout}


def _pattern(width, signed):
    """A value whose encoding has distinct nonzero bytes 01 02 03 … (little-endian)."""
    raw = bytes(range(1, width + 1))
    return raw if signed is None else int.from_bytes(raw, "little", signed=signed)


@pytest.mark.parametrize("name,size", SIZES)
def test_struct_size(name, size):
    assert structs.struct_size(getattr(structs, name)) == size


@pytest.mark.parametrize("name", LAYOUTS)
def test_fields_are_exactly_the_headers(name):
    got = [sc.name for sc in getattr(structs, name).subcons if sc.name]
    assert got == [f[0] for f in LAYOUTS[name]]


@pytest.mark.parametrize("name,field,offset,width,signed", FIELDS)
def test_field_lands_at_its_offset(name, field, offset, width, signed):
    struct = getattr(structs, name)
    size = structs.struct_size(struct)
    values = _zero(LAYOUTS[name])
    values[field] = _pattern(width, signed)
    built = struct.build(values)
    expected = bytes(offset) + bytes(range(1, width + 1)) + bytes(size - offset - width)
    assert built == expected


@pytest.mark.parametrize("name", ["CreateSession", "PreserveFd", "RetrieveFd"])
def test_fd_is_signed(name):
    struct = getattr(structs, name)
    raw = bytearray(structs.struct_size(struct))
    raw[4:8] = b"\xff\xff\xff\xff"
    assert struct.parse(bytes(raw)).fd == -1


@pytest.mark.parametrize("name", ["PreserveFd", "RetrieveFd"])
def test_token_is_a_full_u64(name):
    struct = getattr(structs, name)
    raw = bytes(8) + b"\xff" * 8
    assert struct.parse(raw).token == 2**64 - 1


@pytest.mark.parametrize("name,size", SIZES)
@given(data=st.data())
def test_build_parse_round_trip_is_byte_exact(name, size, data):
    struct = getattr(structs, name)
    raw = data.draw(st.binary(min_size=size, max_size=size))
    assert struct.build(struct.parse(raw)) == raw


@pytest.mark.parametrize("name,size", SIZES)
def test_one_byte_short_is_a_stream_error(name, size):
    with pytest.raises(StreamError):
        getattr(structs, name).parse(bytes(range(size - 1)))


@pytest.mark.parametrize("name,size", SIZES)
def test_one_byte_long_is_a_terminated_error(name, size):
    with pytest.raises(TerminatedError):
        getattr(structs, name).parse(bytes(range(size)) + b"\0")


@pytest.mark.parametrize("name", ["CreateSession", "GetName"])
@pytest.mark.parametrize("length", [63, 65])
def test_building_a_name_of_the_wrong_length_fails(name, length):
    values = _zero(LAYOUTS[name])
    values["name"] = b"x" * length
    with pytest.raises(ConstructError):
        getattr(structs, name).build(values)


# ---- structs.codec: the per-ioctl twin -------------------------------------------------------


@pytest.mark.parametrize("name,size", SIZES)
def test_codec_has_the_struct_size_and_fields(name, size):
    c = structs.codec(getattr(structs, name))
    assert c.size == size
    assert list(c.names) == [f[0] for f in LAYOUTS[name]]


@pytest.mark.parametrize("name,size", SIZES)
@given(data=st.data())
def test_codec_agrees_with_construct_byte_for_byte(name, size, data):
    struct = getattr(structs, name)
    c = structs.codec(struct)
    raw = data.draw(st.binary(min_size=size, max_size=size))
    ours, reference = c.parse(raw), struct.parse(raw)
    assert {n: getattr(ours, n) for n in c.names} == {n: reference[n] for n in c.names}
    assert c.build(ours) == raw
    assert c.build(reference) == raw
    assert c.pack(*(reference[n] for n in c.names)) == raw  # the fields in order
    assert struct.build(vars(ours)) == raw


@pytest.mark.parametrize("name,field,offset,width,signed", FIELDS)
def test_codec_puts_each_field_at_its_offset(name, field, offset, width, signed):
    struct = getattr(structs, name)
    values = _zero(LAYOUTS[name])
    values[field] = _pattern(width, signed)
    assert structs.codec(struct).build(values) == struct.build(values)


@pytest.mark.parametrize("name,size", SIZES)
@pytest.mark.parametrize("delta", [-1, +1])
def test_codec_rejects_one_byte_short_or_long(name, size, delta):
    with pytest.raises(ValueError):
        structs.codec(getattr(structs, name)).parse(bytes(size + delta))


@pytest.mark.parametrize("name", ["CreateSession", "GetName"])
@pytest.mark.parametrize("length", [63, 65])
def test_codec_rejects_a_name_of_the_wrong_length_like_construct(name, length):
    """struct's "64s" pads or cuts silently; the twin must refuse what construct refuses."""
    values = _zero(LAYOUTS[name])
    values["name"] = b"x" * length
    with pytest.raises((ConstructError, ValueError, struct_error)):
        structs.codec(getattr(structs, name)).build(values)
    with pytest.raises(ValueError):
        structs.codec(getattr(structs, name)).pack(*values.values())


@pytest.mark.parametrize("value", [-1, 2**32])
def test_codec_rejects_out_of_range_integers(value):
    values = _zero(LAYOUTS["Finish"])
    values["reserved"] = value
    with pytest.raises((ConstructError, ValueError, struct_error)):
        structs.codec(structs.Finish).build(values)
    with pytest.raises(ConstructError):
        structs.Finish.build(values)
