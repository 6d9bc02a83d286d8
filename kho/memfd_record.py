"""The memfd file handler's record, ``struct memfd_luo_ser`` v2 (uapi.md §17).

The record sits in preserved memory and its address is the file's ``data``
handle.  Layout as in the kernel's ABI header: the ``folios`` member is a
16-byte ``struct kho_vmalloc`` descriptor (kho.md §4), so the record is 48
bytes.  The emulator hands the memfd itself to the next kernel, so
``nr_folios`` is 0 and the descriptor empty, but the fields are kept so the
record stays the kernel's.
"""

from dataclasses import dataclass, field

from construct import Int16ul, Int32ul, Int64ul, Struct
from struct_mirror import struct_mirror

from .errors import KhoFormatError

MEMFD_COMPATIBLE = "memfd-v2"

F_SEAL_SEAL = 0x1
F_SEAL_SHRINK = 0x2
F_SEAL_GROW = 0x4
F_SEAL_WRITE = 0x8
F_SEAL_FUTURE_WRITE = 0x10
F_SEAL_EXEC = 0x20
#: The seals memfd-v2 can carry; any other bit means a newer, unknown format.
MEMFD_LUO_ALL_SEALS = (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
                       | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC)

# struct kho_vmalloc: where a vmalloc'ed array was preserved.
KhoVmalloc = Struct(
    "first" / Int64ul,        # physical address of the first chunk, 0 = none
    "total_pages" / Int32ul,
    "flags" / Int16ul,        # 1 = VM_ALLOC, 2 = huge vmap
    "order" / Int16ul,
)

# struct memfd_luo_ser (packed)
MemfdLuoSer = Struct(
    "pos" / Int64ul,          # file position of the preserved open file
    "size" / Int64ul,         # i_size
    "seals" / Int32ul,
    "flags" / Int32ul,        # file flags
    "nr_folios" / Int64ul,
    "folios" / KhoVmalloc,    # array of struct memfd_luo_folio_ser
)
# No Terminated: decode checks the exact length first, with a clearer message.
MEMFD_RECORD_SIZE = MemfdLuoSer.sizeof()
# Every RETRIEVE_FD decodes one record: through construct that was ~30 µs, most of the
# ioctl. The layout is derived from MemfdLuoSer; tests compare both decodings.
MEMFD_RECORD = struct_mirror(MemfdLuoSer)

_LIMITS = {"pos": 64, "size": 64, "seals": 32, "flags": 32, "nr_folios": 64}
_VMALLOC_LIMITS = {"first": 64, "total_pages": 32, "flags": 16, "order": 16}


def _check_fields(record, limits: dict[str, int], what: str) -> None:
    for name, bits in limits.items():
        value = getattr(record, name)
        if not isinstance(value, int) or not 0 <= value < 1 << bits:
            raise ValueError(f"{what}.{name} = {value!r} does not fit in {bits} unsigned bits")


@dataclass(frozen=True)
class VmallocDescriptor:
    """``struct kho_vmalloc``; all zero when nothing was preserved this way."""

    first: int = 0
    total_pages: int = 0
    flags: int = 0
    order: int = 0

    def __post_init__(self):
        _check_fields(self, _VMALLOC_LIMITS, "kho_vmalloc")


@dataclass(frozen=True)
class MemfdRecord:
    """What the memfd handler saves per file; validates itself when built."""

    pos: int
    size: int
    seals: int = 0
    flags: int = 0
    nr_folios: int = 0
    folios: VmallocDescriptor = field(default_factory=VmallocDescriptor)

    def __post_init__(self):
        _check_fields(self, _LIMITS, "memfd_luo_ser")
        if self.seals & ~MEMFD_LUO_ALL_SEALS:
            raise ValueError(f"memfd_luo_ser.seals has unknown bits "
                             f"{self.seals & ~MEMFD_LUO_ALL_SEALS:#x}")


def encode_memfd_record(record: MemfdRecord) -> bytes:
    return MemfdLuoSer.build(dict(
        pos=record.pos, size=record.size, seals=record.seals, flags=record.flags,
        nr_folios=record.nr_folios, folios=vars(record.folios)))


def decode_memfd_record(data: bytes) -> MemfdRecord:
    """Decode and validate; errors are :class:`KhoFormatError`."""
    pos, size, seals, flags, nr_folios, first, total_pages, vflags, order = _checked(data)
    return MemfdRecord(pos, size, seals, flags, nr_folios,
                       VmallocDescriptor(first, total_pages, vflags, order))


def memfd_record_size(data: bytes) -> int:
    """The ``size`` of a record that decode_memfd_record() would accept (its errors too),
    without building the record: all a retrieve needs of it."""
    return _checked(data)[1]


def _checked(data: bytes) -> tuple:
    what = "memfd record"
    if len(data) != MEMFD_RECORD_SIZE:
        raise KhoFormatError(f"{what}: {len(data)} bytes, expected {MEMFD_RECORD_SIZE}")
    fields = MEMFD_RECORD.unpack(data)
    seals, nr_folios, first = fields[2], fields[4], fields[5]
    if seals & ~MEMFD_LUO_ALL_SEALS:
        raise KhoFormatError(f"{what}: unknown seal bits {seals & ~MEMFD_LUO_ALL_SEALS:#x}")
    if nr_folios and not first:
        raise KhoFormatError(f"{what}: {nr_folios} folios but no folio array (address 0)")
    return fields
