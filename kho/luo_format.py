"""On-wire layouts of LUO's preserved blocks (kho.md §3, uapi.md §17 "G1").

Each construct below mirrors one packed kernel struct, field for field.  The
block definitions (:data:`LuoSessionBlock`, :data:`LuoFlbBlock`) describe a
whole block with derived counts.  :mod:`kho.luo_write` and :mod:`kho.luo_read` move bulk record
arrays through the ``*_RECORD`` mirrors, which are derived from these
definitions and proven byte-identical by the tests.
"""

from construct import (Array, Bytes, Default, Int64ul, Rebuild, Struct, Terminated, this)
from struct_mirror import struct_mirror

from .memory import PAGE_SIZE, pages_for

#: Session names are char[64] including the NUL (LIVEUPDATE_SESSION_NAME_LENGTH).
SESSION_NAME_LENGTH = 64
#: File-handler and FLB compatible strings are char[48] including the NUL.
COMPATIBLE_LENGTH = 48

# struct luo_session_header_ser
LuoSessionHeaderSer = Struct(
    "count" / Int64ul,
)

# struct luo_file_set_ser
LuoFileSetSer = Struct(
    "files" / Int64ul,   # physical address of the luo_file_ser array, 0 if none
    "count" / Int64ul,
)

# struct luo_session_ser
LuoSessionSer = Struct(
    "name" / Bytes(SESSION_NAME_LENGTH),
    "file_set_ser" / LuoFileSetSer,
)

# struct luo_file_ser
LuoFileSer = Struct(
    "compatible" / Bytes(COMPATIBLE_LENGTH),
    "data" / Int64ul,    # the handler's u64 handle (e.g. address of a memfd record)
    "token" / Int64ul,   # user-chosen, unique within the session
)

# struct luo_flb_header_ser
LuoFlbHeaderSer = Struct(
    "pgcnt" / Int64ul,   # pages in the FLB block, header included
    "count" / Int64ul,
)

# struct luo_flb_ser
LuoFlbSer = Struct(
    "name" / Bytes(COMPATIBLE_LENGTH),
    "data" / Int64ul,
    "count" / Int64ul,   # how many preserved files use this object
)

#: The session block: a header, then packed session records.  The kernel
#: reserves a fixed 16 pages; the emulator allocates as many pages as the
#: records need, so the block's length is all the header implies.
LuoSessionBlock = Struct(
    "header" / Rebuild(LuoSessionHeaderSer, lambda this: dict(count=len(this.sessions))),
    "sessions" / Array(this.header.count, LuoSessionSer),
    Terminated,
)


def flb_block_pages(count: int) -> int:
    return pages_for(LuoFlbHeaderSer.sizeof() + count * LuoFlbSer.sizeof())


def _flb_unused_len(this) -> int:
    used = LuoFlbHeaderSer.sizeof() + this.header.count * LuoFlbSer.sizeof()
    return this.header.pgcnt * PAGE_SIZE - used


#: The FLB block: whole pages, counted by its own header.
LuoFlbBlock = Struct(
    "header" / Rebuild(LuoFlbHeaderSer, lambda this: dict(pgcnt=flb_block_pages(len(this.flbs)),
                                                          count=len(this.flbs))),
    "flbs" / Array(this.header.count, LuoFlbSer),
    # Free space after the last entry, zero when written; kept on parse so
    # that a parsed block rebuilds to the same bytes.
    "_unused" / Default(Bytes(_flb_unused_len), lambda this: bytes(_flb_unused_len(this))),
    Terminated,
)

SESSION_RECORD = struct_mirror(LuoSessionSer)
FILE_RECORD = struct_mirror(LuoFileSer)
SESSION_HEADER = struct_mirror(LuoSessionHeaderSer)
