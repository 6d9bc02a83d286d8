"""The DMA engine's record: 32 bytes, 128 to a page, in a ring of ``entries`` slots.

::

    struct luofs_dma_record {      // little-endian
        u64 seq;                   // 0, 1, 2, … since the device's last reset
        u64 timestamp_ns;          // CLOCK_MONOTONIC when the batch was written
        u32 device_id;             // which device wrote it
        u32 epoch;                 // the device's reset count: stale slots are told apart
        u32 _reserved;             // zero
        u32 crc;                   // CRC-32 (zlib's) of the 28 bytes above
    };

Shared: the machine packs records (:func:`pack_records`), a kernel unpacks them
(:func:`unpack_records`). Unhappy paths: a record whose CRC or reserved field is
wrong is not an error here, it is :attr:`Record.valid` False, and the driver counts
and skips it; data that is not a whole number of records is ``struct.error``.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from .ram import PAGE_SIZE

#: ``struct luofs_dma_record`` above, field for field. Plain :mod:`struct`, not construct:
#: the machine process writes records and must stay small (a test checks the layout
#: against a construct definition).
RECORD = struct.Struct("<QQIIII")
RECORD_SIZE = RECORD.size
RECORDS_PER_PAGE = PAGE_SIZE // RECORD_SIZE
_BODY = struct.Struct(RECORD.format[:-1])  # every field but the crc
assert RECORD_SIZE == 32 and PAGE_SIZE % RECORD_SIZE == 0


class Record(NamedTuple):
    seq: int
    timestamp_ns: int
    device_id: int
    epoch: int
    reserved: int
    crc: int

    @property
    def valid(self) -> bool:
        body = _BODY.pack(self.seq, self.timestamp_ns, self.device_id, self.epoch, self.reserved)
        return self.reserved == 0 and zlib.crc32(body) == self.crc


def pack_records(first_seq: int, count: int, timestamp_ns: int, device_id: int,
                 epoch: int) -> bytes:
    """``count`` consecutive records starting at ``first_seq``."""
    out = bytearray(count * RECORD_SIZE)
    for i in range(count):
        body = _BODY.pack(first_seq + i, timestamp_ns, device_id, epoch, 0)
        offset = i * RECORD_SIZE
        out[offset:offset + 28] = body
        out[offset + 28:offset + 32] = zlib.crc32(body).to_bytes(4, "little")
    return bytes(out)


def unpack_records(data: bytes) -> list[Record]:
    return [Record(*fields) for fields in RECORD.iter_unpack(data)]


def ring_pages(entries: int) -> int:
    return entries * RECORD_SIZE // PAGE_SIZE
