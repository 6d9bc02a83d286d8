"""The mainline ioctl argument structs, field for field as in the kernel's uapi header.

Little-endian, natural alignment; sizes are pinned by tests (72/72/16/16/8/72).
Each struct parses exactly its own size: `Terminated` turns stray bytes into an error.
"""

import operator
import struct
from functools import lru_cache
from types import SimpleNamespace

from construct import Bytes, Int32sl, Int32ul, Int64ul, Struct, Terminated
from struct_mirror import field_formats

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
    cost little more than one FUSE request. The layout is derived (struct_mirror),
    never written twice, and tests compare both codecs' bytes.
    """

    def __init__(self, definition: Struct):
        fields = field_formats(definition)
        self.names = tuple(name for name, _ in fields)
        self.packer = struct.Struct("<" + "".join(fmt for _, fmt in fields))
        self.size = self.packer.size
        getter = operator.attrgetter(*self.names)  # a namespace's values, in order
        self._fields = getter if len(self.names) > 1 else (lambda values: (getter(values),))
        # struct pads or cuts byte strings silently; construct refuses: so do we.
        self._byte_fields = tuple((i, name, int(fmt[:-1])) for i, (name, fmt) in enumerate(fields)
                                  if fmt.endswith("s"))

    def parse(self, data: bytes) -> SimpleNamespace:
        if len(data) != self.size:
            raise ValueError(f"expected {self.size} bytes, got {len(data)}")
        parsed = SimpleNamespace()
        parsed.__dict__.update(zip(self.names, self.packer.unpack(data)))
        return parsed

    def build(self, values) -> bytes:
        if isinstance(values, dict):
            values = SimpleNamespace(**values)
        return self.pack(*self._fields(values))

    def pack(self, *fields) -> bytes:
        """The struct from its field values, in order (as build() with a namespace)."""
        for i, name, length in self._byte_fields:
            if len(fields[i]) != length:
                raise ValueError(f"field {name} must be {length} bytes, got {len(fields[i])}")
        return self.packer.pack(*fields)


@lru_cache(maxsize=None)
def codec(s: Struct) -> StructCodec:
    return StructCodec(s)
