"""The mainline ioctl argument structs, field for field as in the kernel's uapi header.

Little-endian, natural alignment; sizes are pinned by tests (72/72/16/16/8/72).
Each struct parses exactly its own size: `Terminated` turns stray bytes into an error.
"""

import struct
from functools import lru_cache
from types import SimpleNamespace

from construct import Bytes, FormatField, Int32sl, Int32ul, Int64ul, Renamed, Struct, Terminated

from .ioctl import LIVEUPDATE_SESSION_NAME_LENGTH

_name = Bytes(LIVEUPDATE_SESSION_NAME_LENGTH)

# struct liveupdate_ioctl_create_session / liveupdate_ioctl_retrieve_session
CreateSession = Struct(
    "size" / Int32ul,
    "fd" / Int32sl,  # out
    "name" / _name,  # in
    Terminated,
)
RetrieveSession = CreateSession

# struct liveupdate_session_preserve_fd
PreserveFd = Struct(
    "size" / Int32ul,
    "fd" / Int32sl,  # in
    "token" / Int64ul,  # in
    Terminated,
)

# struct liveupdate_session_retrieve_fd
RetrieveFd = Struct(
    "size" / Int32ul,
    "fd" / Int32sl,  # out
    "token" / Int64ul,  # in
    Terminated,
)

# struct liveupdate_session_finish
Finish = Struct(
    "size" / Int32ul,
    "reserved" / Int32ul,  # not validated by the kernel (spec §11)
    Terminated,
)

# struct liveupdate_session_get_name
GetName = Struct(
    "size" / Int32ul,
    "reserved" / Int32ul,  # must be 0
    "name" / _name,  # out
    Terminated,
)


@lru_cache(maxsize=None)
def struct_size(s: Struct) -> int:
    """Bytes of a struct without its `Terminated` marker (which has no size)."""
    return sum(sc.sizeof() for sc in s.subcons if sc is not Terminated)


class StructCodec:
    """A `struct.Struct` derived from a construct definition, for the per-ioctl path.

    Parsing through construct costs microseconds per struct; a status-only ioctl must
    cost little more than one FUSE request. The layout is derived, never written
    twice, and tests compare both codecs' bytes.
    """

    def __init__(self, definition: Struct):
        fields = [sc for sc in definition.subcons if sc is not Terminated]
        self.names = tuple(sc.name for sc in fields)
        formats = [_format(sc) for sc in fields]
        self.packer = struct.Struct("<" + "".join(formats))
        self.size = self.packer.size
        # struct pads or cuts byte strings silently; construct refuses: so do we.
        self._byte_fields = tuple((name, int(fmt[:-1])) for name, fmt in zip(self.names, formats)
                                  if fmt.endswith("s"))

    def parse(self, data: bytes) -> SimpleNamespace:
        if len(data) != self.size:
            raise ValueError(f"expected {self.size} bytes, got {len(data)}")
        return SimpleNamespace(**dict(zip(self.names, self.packer.unpack(data))))

    def build(self, values) -> bytes:
        if isinstance(values, dict):
            values = SimpleNamespace(**values)
        for name, length in self._byte_fields:
            if len(getattr(values, name)) != length:
                raise ValueError(f"field {name} must be {length} bytes, "
                                 f"got {len(getattr(values, name))}")
        return self.packer.pack(*(getattr(values, name) for name in self.names))


def _format(field) -> str:
    if isinstance(field, Renamed):
        return _format(field.subcon)
    if isinstance(field, FormatField) and field.fmtstr[0] == "<":
        return field.fmtstr[1:]
    if isinstance(field, Bytes) and isinstance(field.length, int):
        return f"{field.length}s"
    raise TypeError(f"no fixed little-endian format for {field!r}")


@lru_cache(maxsize=None)
def codec(s: Struct) -> StructCodec:
    return StructCodec(s)
