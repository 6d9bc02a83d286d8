"""The mainline ioctl argument structs, field for field as in the kernel's uapi header.

Little-endian, natural alignment; sizes are pinned by tests (72/72/16/16/8/72).
Each struct parses exactly its own size: `Terminated` turns stray bytes into an error.
"""

from functools import lru_cache

from construct import Bytes, Int32sl, Int32ul, Int64ul, Struct, Terminated

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


@lru_cache(maxsize=None)
def compiled(s: Struct):
    """The same struct compiled to Python code: ~3× faster, for the per-ioctl path."""
    return s.compile()
