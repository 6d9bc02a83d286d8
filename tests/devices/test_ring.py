"""devices/ring.py: the DMA record, byte for byte as its C header (checked with construct)."""

import struct
import zlib

import pytest
from construct import Int32ul, Int64ul, Struct, Terminated

from devices.ring import RECORD_SIZE, RECORDS_PER_PAGE, pack_records, ring_pages, unpack_records

#: ``struct luofs_dma_record``, written independently of the module, as the oracle.
DmaRecord = Struct(
    "seq" / Int64ul,
    "timestamp_ns" / Int64ul,
    "device_id" / Int32ul,
    "epoch" / Int32ul,
    "_reserved" / Int32ul,
    "crc" / Int32ul,
)


def test_packed_records_are_the_c_layout():
    data = pack_records(7, 3, 123_456_789, 0x4C55, 2)
    assert len(data) == 3 * RECORD_SIZE == 3 * DmaRecord.sizeof()
    for i in range(3):
        chunk = data[i * RECORD_SIZE:(i + 1) * RECORD_SIZE]
        parsed = Struct("r" / DmaRecord, Terminated).parse(chunk).r
        assert (parsed.seq, parsed.timestamp_ns, parsed.device_id, parsed.epoch,
                parsed._reserved) == (7 + i, 123_456_789, 0x4C55, 2, 0)
        assert parsed.crc == zlib.crc32(chunk[:28])
        assert DmaRecord.build(parsed) == chunk  # byte-exact round trip


def test_unpack_round_trips_and_validates():
    records = unpack_records(pack_records(0, 4, 1, 2, 3))
    assert [r.seq for r in records] == [0, 1, 2, 3] and all(r.valid for r in records)


@pytest.mark.parametrize("offset", [0, 8, 16, 20, 24, 28])
def test_a_flipped_byte_makes_the_record_invalid(offset):
    data = bytearray(pack_records(5, 1, 1, 2, 3))
    data[offset] ^= 0x01
    [record] = unpack_records(bytes(data))
    assert not record.valid


def test_data_that_is_not_whole_records_is_a_struct_error():
    with pytest.raises(struct.error):
        unpack_records(bytes(RECORD_SIZE + 1))


def test_ring_geometry():
    assert RECORD_SIZE == 32 and RECORDS_PER_PAGE == 128
    assert ring_pages(256) == 2
