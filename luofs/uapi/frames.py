"""Frames: how an ioctl travels from a client process to the emulated kernel.

pyfuse3 has no ioctl operation and tells a handler who is calling only on some
operations. getxattr and create carry the caller's identity (the calling thread's
id, from the kernel, not from the client), so a request is encoded into the
*name* of a getxattr ("user.luo.<hex>") or of a create ("luo.<hex>"), and the
reply comes back as the getxattr value (or as the newly opened file). One FUSE
request per ioctl, and no trust in what the client claims about itself beyond
its own memory.

The client acts as the kernel's copy_from_user: it reads the caller's struct and
reports what it could not read as flags, so the daemon can apply the dispatch
rules of spec/uapi.md §4 in the kernel's order.
"""

import struct
from collections import namedtuple
from functools import partial

from construct import Const, FlagsEnum, GreedyBytes, Int8ul, Int16sl, Int16ul, Int32sl, Int32ul, Struct

XATTR_PREFIX = b"user.luo."
CREATE_PREFIX = b"luo."
NAME_MAX = 255  # a path component and an xattr name share this limit

RequestFlags = FlagsEnum(
    Int8ul,
    arg_fault=0x01,  # the u32 `size` could not be read: EFAULT after the nr check
    copy_fault=0x02,  # reading `size` bytes faulted: EFAULT in copy_struct_from_user
    tail_nonzero=0x04,  # a nonzero byte lies past the bytes carried in `arg`
    fd_table_full=0x08,  # the caller has no free fd: EMFILE where the kernel allocates one
    # The caller's getxattr buffer holds any reply (REPLY_MAX bytes). A request without
    # it is ERANGE before it runs: FUSE checks the buffer only after the daemon answered,
    # and a request that fails must change nothing.
    room_for_reply=0x10,
)

Request = Struct(
    "magic" / Const(b"LU"),
    "version" / Const(1, Int8ul),
    "flags" / RequestFlags,
    "cmd" / Int32ul,
    "file_fd" / Int32sl,  # the caller's fd the ioctl was issued on
    "reply_fd" / Int32sl,  # the caller's unix socket that receives returned fds, or -1
    "nonce" / Int32ul,  # makes every create name unique, so no dentry is ever reused;
    # 0 on getxattr names, so that the same request always has the same name
    "arg" / GreedyBytes,  # the first bytes of the caller's struct, `size` first
)
REQUEST_HEADER_SIZE = 20
# Struct bytes a request carries: more than the largest struct (72), and small
# enough that the hex-encoded frame fits in a name behind the longer prefix.
MAX_ARG = 96
assert len(XATTR_PREFIX) + 2 * (REQUEST_HEADER_SIZE + MAX_ARG) <= NAME_MAX

ReplyFlags = FlagsEnum(Int8ul, fd_sent=0x01)
REPLY_HEADER_SIZE = 8
# The value buffer every client passes (os.getxattr's first try is 128 bytes): room for
# any reply, whose data is at most the largest struct.
REPLY_MAX = 128
assert REPLY_HEADER_SIZE + MAX_ARG <= REPLY_MAX

Reply = Struct(
    "magic" / Const(b"LR"),
    "version" / Const(1, Int8ul),
    "flags" / ReplyFlags,
    "fd_offset" / Int16sl,  # where the received fd's number is written into `data`, or -1
    "_reserved" / Const(0, Int16ul),
    "data" / GreedyBytes,  # the bytes the kernel copies back: min(size, struct size)
)


# Every ioctl crosses these codecs twice, and a status-only ioctl must cost little more
# than one FUSE request: the hot path packs with `struct`. The construct definitions
# above stay the reference; tests check that both agree byte for byte.
_REQUEST_HEADER = struct.Struct("<2sBBIiiI")
_REPLY_HEADER = struct.Struct("<2sBBhH")
_FLAG_BITS = {"arg_fault": 0x01, "copy_fault": 0x02, "tail_nonzero": 0x04, "fd_table_full": 0x08,
              "room_for_reply": 0x10}
_KNOWN_FLAGS = 0x1F


class RequestFlagsView:
    """The decoded flag bits, with the attribute names of the construct FlagsEnum."""

    __slots__ = ("arg_fault", "copy_fault", "tail_nonzero", "fd_table_full", "room_for_reply")

    def __init__(self, bits: int):
        self.arg_fault = bool(bits & 0x01)
        self.copy_fault = bool(bits & 0x02)
        self.tail_nonzero = bool(bits & 0x04)
        self.fd_table_full = bool(bits & 0x08)
        self.room_for_reply = bool(bits & 0x10)


# Every combination of known bits, decoded once (a view is never changed).
_FLAG_VIEWS = tuple(RequestFlagsView(bits) for bits in range(_KNOWN_FLAGS + 1))


DecodedRequest = namedtuple("DecodedRequest", "flags cmd file_fd reply_fd nonce arg")
DecodedReply = namedtuple("DecodedReply", "fd_sent fd_offset data")
# One of each per request: built by tuple.__new__ itself, with no Python frame.
_new_request = partial(tuple.__new__, DecodedRequest)
_new_reply = partial(tuple.__new__, DecodedReply)


class FrameError(ValueError):
    """A frame that is not well formed; the daemon answers EINVAL and logs why."""


def expected_arg_len(size: int) -> int:
    """How many struct bytes a well-formed request carries for a given `size`."""
    return min(max(size, 4), MAX_ARG)


def encode_request(cmd, arg, *, file_fd=-1, reply_fd=-1, nonce=0, room_for_reply=True,
                   **flags) -> bytes:
    """Our clients always pass a buffer of REPLY_MAX bytes: `room_for_reply` says so."""
    bits = 0x10 if room_for_reply else 0
    for name, on in flags.items():
        if on:
            bits |= _FLAG_BITS[name]
    return _REQUEST_HEADER.pack(b"LU", 1, bits, cmd, file_fd, reply_fd, nonce) + bytes(arg)


def decode_request(frame: bytes) -> DecodedRequest:
    if len(frame) < REQUEST_HEADER_SIZE:
        raise FrameError(f"request frame of {len(frame)} bytes is shorter than its header")
    magic, version, bits, cmd, file_fd, reply_fd, nonce = _REQUEST_HEADER.unpack_from(frame)
    if magic != b"LU" or version != 1:
        raise FrameError(f"request frame has magic {magic!r} version {version}, "
                         f"expected b'LU' version 1")
    if bits & ~_KNOWN_FLAGS:
        raise FrameError(f"request frame has unknown flags {bits:#x}")
    arg = frame[REQUEST_HEADER_SIZE:]
    if bits & 0x01:  # arg_fault
        if arg:
            raise FrameError("request says the argument faulted but carries bytes")
    elif len(arg) > MAX_ARG:
        raise FrameError(f"request carries {len(arg)} argument bytes, more than {MAX_ARG}")
    return _new_request((_FLAG_VIEWS[bits], cmd, file_fd, reply_fd, nonce, arg))


def sized_ok(req: DecodedRequest) -> bool:
    """For size-prefixed ABIs (mainline): the frame carries exactly the bytes its `size`
    calls for (fewer only when the caller's memory faulted). RFC v2 numbers encode the
    size themselves and carry exactly that many bytes."""
    flags, arg = req.flags, req.arg
    if flags.arg_fault:
        return True
    carried = len(arg)
    if carried < 4:
        return False
    if flags.copy_fault:
        return True
    size = int.from_bytes(arg[:4], "little")
    return carried == (4 if size < 4 else MAX_ARG if size > MAX_ARG else size)  # expected_arg_len


def _hex_name_reader(prefix: bytes):
    """The reader of the frame a name with `prefix` carries (one function per prefix: it
    runs on every ioctl, and a partial or a second call each time costs more)."""
    skip = len(prefix)

    def frame_from_name(name: bytes) -> bytes:
        if not name.startswith(prefix):
            raise FrameError(f"name {name[:16]!r}… lacks the {prefix!r} prefix")
        digits = name[skip:]
        # bytes.fromhex would skip white space: only bare hex digits make a frame.
        if not digits.isalnum():
            raise FrameError("request name is not hex")
        try:
            return bytes.fromhex(digits.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise FrameError("request name is not hex") from None

    return frame_from_name


def request_xattr_name(frame: bytes) -> bytes:
    return XATTR_PREFIX + frame.hex().encode()


def request_create_name(frame: bytes) -> bytes:
    return CREATE_PREFIX + frame.hex().encode()


# The frame a getxattr (create) name carries; FrameError if it carries none.
frame_from_xattr_name = _hex_name_reader(XATTR_PREFIX)
frame_from_create_name = _hex_name_reader(CREATE_PREFIX)


def encode_reply(data: bytes, fd_offset: int = -1, fd_sent: bool = False) -> bytes:
    return _REPLY_HEADER.pack(b"LR", 1, 1 if fd_sent else 0, fd_offset, 0) + data


# The header of every reply that carries no fd.
PLAIN_REPLY_HEADER = _REPLY_HEADER.pack(b"LR", 1, 0, -1, 0)


def decode_reply(frame: bytes) -> DecodedReply:
    if len(frame) < _REPLY_HEADER.size:
        raise FrameError(f"reply frame of {len(frame)} bytes is shorter than its header")
    magic, version, bits, fd_offset, reserved = _REPLY_HEADER.unpack_from(frame)
    if magic != b"LR" or version != 1 or reserved != 0 or bits & ~0x01:
        raise FrameError(f"malformed reply frame header {frame[:8].hex()}")
    return _new_reply((bool(bits & 0x01), fd_offset, frame[_REPLY_HEADER.size:]))
