import struct

import pytest
from hypothesis import given, strategies as st

from kho.errors import KhoFormatError
from kho.memfd_record import (MEMFD_COMPATIBLE, MEMFD_LUO_ALL_SEALS, MEMFD_RECORD_SIZE, KhoVmalloc,
                              MemfdLuoSer, MemfdRecord, VmallocDescriptor, decode_memfd_record,
                              encode_memfd_record, memfd_record_size)


def test_layout_matches_the_kernel_header():
    assert KhoVmalloc.sizeof() == 16
    assert MEMFD_RECORD_SIZE == 48
    assert MEMFD_COMPATIBLE == "memfd-v2"
    record = MemfdRecord(pos=1, size=2, seals=0x3, flags=0x8002, nr_folios=4,
                         folios=VmallocDescriptor(first=0x5000, total_pages=6, flags=1, order=7))
    assert encode_memfd_record(record) == struct.pack("<QQIIQQIHH", 1, 2, 3, 0x8002, 4, 0x5000, 6, 1, 7)


@given(st.binary(min_size=48, max_size=48))
def test_construct_round_trips_byte_exact(raw):
    assert MemfdLuoSer.build(MemfdLuoSer.parse(raw)) == raw


@given(st.binary(min_size=48, max_size=48))
def test_decode_agrees_with_the_construct_definition(raw):
    parsed = MemfdLuoSer.parse(raw)
    try:
        record = decode_memfd_record(raw)
    except KhoFormatError:  # only what the kernel refuses
        assert parsed.seals & ~MEMFD_LUO_ALL_SEALS or (parsed.nr_folios and not parsed.folios.first)
        return
    assert (record.pos, record.size, record.seals, record.flags, record.nr_folios) == (
        parsed.pos, parsed.size, parsed.seals, parsed.flags, parsed.nr_folios)
    assert vars(record.folios) == {k: v for k, v in parsed.folios.items() if k != "_io"}


records = st.builds(
    MemfdRecord, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, MEMFD_LUO_ALL_SEALS), st.integers(0, 2**32 - 1), st.just(0),
    st.builds(VmallocDescriptor, st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1),
              st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1)))


@given(records)
def test_records_round_trip(record):
    encoded = encode_memfd_record(record)
    assert len(encoded) == MEMFD_RECORD_SIZE
    assert decode_memfd_record(encoded) == record
    assert memfd_record_size(encoded) == record.size


def test_the_emulators_record_has_no_folios():
    record = MemfdRecord(pos=10, size=4096)
    assert record.nr_folios == 0 and record.folios == VmallocDescriptor()
    assert encode_memfd_record(record)[24:] == bytes(24)


@pytest.mark.parametrize("data, message", [
    (bytes(40), "memfd record: 40 bytes, expected 48"),
    (bytes(49), "memfd record: 49 bytes, expected 48"),
    (struct.pack("<QQII", 0, 0, 0x40, 0) + bytes(24), "memfd record: unknown seal bits 0x40"),
    (struct.pack("<QQIIQ", 0, 0, 0, 0, 3) + bytes(16), r"memfd record: 3 folios but no folio array \(address 0\)"),
])
def test_bad_records_are_rejected(data, message):
    with pytest.raises(KhoFormatError, match=message):
        decode_memfd_record(data)
    with pytest.raises(KhoFormatError, match=message):
        memfd_record_size(data)


@pytest.mark.parametrize("build, message", [
    (lambda: MemfdRecord(pos=-1, size=0), r"memfd_luo_ser.pos = -1 does not fit in 64 unsigned bits"),
    (lambda: MemfdRecord(pos=0, size=0, flags=2**32), r"memfd_luo_ser.flags = 4294967296 does not fit in 32"),
    (lambda: MemfdRecord(pos=0, size=0, seals=0x80), "memfd_luo_ser.seals has unknown bits 0x80"),
    (lambda: VmallocDescriptor(order=2**16), "kho_vmalloc.order = 65536 does not fit in 16"),
])
def test_records_validate_themselves(build, message):
    with pytest.raises(ValueError, match=message):
        build()
