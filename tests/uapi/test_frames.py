"""luofs/uapi/frames.py: request/reply frames and their hex-name transport.

The construct definitions (frames.Request, frames.Reply) are the reference; the
`struct` hot path (encode_*/decode_*) must agree with them byte for byte.
"""

import pytest
from hypothesis import example, given, strategies as st

from luofs.uapi.frames import (
    CREATE_PREFIX,
    MAX_ARG,
    NAME_MAX,
    REQUEST_HEADER_SIZE,
    XATTR_PREFIX,
    FrameError,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    expected_arg_len,
    sized_ok,
    frame_from_create_name,
    frame_from_xattr_name,
    request_create_name,
    request_xattr_name,
)

u32 = st.integers(0, 2**32 - 1)
s32 = st.integers(-(2**31), 2**31 - 1)
FLAG_NAMES = ("arg_fault", "copy_fault", "tail_nonzero", "fd_table_full", "room_for_reply")


def arg_for(size: int, fill: bytes = b"") -> bytes:
    """The bytes a well-formed request carries for `size`."""
    n = expected_arg_len(size)
    return (size.to_bytes(4, "little") + fill).ljust(n, b"\0")[:n]


def frame(size=72, **kw) -> bytes:
    return encode_request(0xBA00, arg_for(size), **kw)


def flags_of(req) -> dict:
    return {f: bool(getattr(req.flags, f)) for f in FLAG_NAMES}


def reencode(req) -> bytes:
    """The frame a decoded request stands for, rebuilt by the hot path."""
    return encode_request(req.cmd, req.arg, file_fd=req.file_fd, reply_fd=req.reply_fd,
                          nonce=req.nonce, **flags_of(req))


def reference_request(fields) -> bytes:
    flags = {f: fields[f] for f in FLAG_NAMES}
    return Request.build(dict(flags=flags, cmd=fields["cmd"], file_fd=fields["file_fd"],
                              reply_fd=fields["reply_fd"], nonce=fields["nonce"],
                              arg=fields["arg"]))


@st.composite
def requests(draw):
    flags = {f: draw(st.booleans()) for f in FLAG_NAMES}
    size = draw(st.one_of(st.integers(0, 120), u32))
    if flags["arg_fault"]:
        arg = b""
    else:
        arg = size.to_bytes(4, "little") + draw(st.binary(
            min_size=expected_arg_len(size) - 4, max_size=expected_arg_len(size) - 4))
    return dict(cmd=draw(u32), arg=arg, file_fd=draw(s32), reply_fd=draw(s32),
                nonce=draw(u32), **flags)


# ---- constants -----------------------------------------------------------------------------


def test_header_is_20_bytes():
    assert REQUEST_HEADER_SIZE == 20
    assert len(encode_request(0, b"", arg_fault=True)) == REQUEST_HEADER_SIZE


def test_max_arg_carries_more_than_the_largest_struct():
    assert MAX_ARG > 72  # a nonzero byte just past a 72-byte struct is seen (E2BIG)


@pytest.mark.parametrize("size,expected", [
    (0, 4), (3, 4), (4, 4), (8, 8), (72, 72), (MAX_ARG, MAX_ARG), (MAX_ARG + 1, MAX_ARG),
    (2**32 - 1, MAX_ARG),
])
def test_expected_arg_len(size, expected):
    assert expected_arg_len(size) == expected


# ---- requests ------------------------------------------------------------------------------


@given(requests())
def test_request_round_trips(fields):
    req = decode_request(encode_request(**fields))
    assert (req.cmd, req.file_fd, req.reply_fd, req.nonce, req.arg) == (
        fields["cmd"], fields["file_fd"], fields["reply_fd"], fields["nonce"], fields["arg"])
    assert flags_of(req) == {f: fields[f] for f in FLAG_NAMES}


@given(requests())
def test_encoded_request_rebuilds_byte_exact(fields):
    raw = encode_request(**fields)
    assert reencode(decode_request(raw)) == raw


@given(requests())
def test_hot_path_request_agrees_with_the_construct_reference(fields):
    raw = encode_request(**fields)
    assert raw == reference_request(fields)
    reference, ours = Request.parse(raw), decode_request(raw)
    assert (reference.cmd, reference.file_fd, reference.reply_fd, reference.nonce,
            reference.arg) == (ours.cmd, ours.file_fd, ours.reply_fd, ours.nonce, ours.arg)
    assert {f: bool(reference.flags[f]) for f in FLAG_NAMES} == flags_of(ours)


@given(flags=st.integers(0, 255), header=st.binary(min_size=16, max_size=16),
       size=st.integers(0, 120), fill=st.binary(max_size=MAX_ARG))
@example(flags=0x20, header=bytes(16), size=72, fill=b"")
def test_any_accepted_request_rebuilds_byte_exact(flags, header, size, fill):
    """Tamper rule: a frame is either rejected or means exactly its bytes (no bit dropped)."""
    raw = b"LU\x01" + bytes([flags]) + header + (b"" if flags & 1 else arg_for(size, fill))
    try:
        req = decode_request(raw)
    except FrameError:
        return
    assert reencode(req) == raw


@pytest.mark.parametrize("bit", [0x20, 0x40, 0x80])
def test_decode_rejects_unknown_request_flags(bit):
    raw = bytearray(frame())
    raw[3] |= bit
    with pytest.raises(FrameError):
        decode_request(bytes(raw))


@given(requests())
def test_request_names_round_trip_behind_both_prefixes(fields):
    raw = encode_request(**fields)
    assert frame_from_xattr_name(request_xattr_name(raw)) == raw
    assert frame_from_create_name(request_create_name(raw)) == raw


@pytest.mark.parametrize("arg_len", range(0, MAX_ARG + 1))
def test_every_legal_request_fits_in_a_name(arg_len):
    # the largest header values; arg_len 0 is an arg_fault frame, 1..3 cannot be legal
    raw = encode_request(2**32 - 1, b"\xff" * arg_len, file_fd=-(2**31), reply_fd=-(2**31),
                         nonce=2**32 - 1, arg_fault=True, copy_fault=True, tail_nonzero=True,
                         fd_table_full=True)
    assert len(request_xattr_name(raw)) <= NAME_MAX
    assert len(request_create_name(raw)) <= NAME_MAX
    assert len(XATTR_PREFIX) > len(CREATE_PREFIX)


def test_arg_fault_frame_with_no_bytes_is_accepted():
    req = decode_request(encode_request(0xBA00, b"", arg_fault=True))
    assert req.flags.arg_fault and req.arg == b""


def test_decode_rejects_wrong_magic():
    raw = bytearray(frame())
    raw[0:2] = b"LX"
    with pytest.raises(FrameError):
        decode_request(bytes(raw))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_decode_rejects_wrong_version(version):
    raw = bytearray(frame())
    raw[2] = version
    with pytest.raises(FrameError):
        decode_request(bytes(raw))


@pytest.mark.parametrize("length", range(0, REQUEST_HEADER_SIZE))
def test_decode_rejects_truncated_header(length):
    with pytest.raises(FrameError):
        decode_request(frame()[:length])


def decode_sized(raw: bytes):
    """What the mainline ABI accepts: a well-formed frame whose bytes match its size."""
    req = decode_request(raw)
    if not sized_ok(req):
        raise FrameError("arg does not match its size")
    return req


@pytest.mark.parametrize("length", range(REQUEST_HEADER_SIZE, REQUEST_HEADER_SIZE + 72))
def test_sized_check_rejects_any_truncated_request(length):
    with pytest.raises(FrameError):
        decode_sized(frame(72)[:length])


@pytest.mark.parametrize("size", [0, 4, 8, 16, 71, 72, 73, MAX_ARG, MAX_ARG + 1, 2**32 - 1])
@pytest.mark.parametrize("delta", [-1, +1])
def test_sized_check_rejects_arg_not_matching_its_size(size, delta):
    arg = arg_for(size)
    arg = arg[:delta] if delta < 0 else arg + b"\0"
    if len(arg) < 4:
        arg = size.to_bytes(4, "little")[: len(arg)]
    with pytest.raises(FrameError):
        decode_sized(encode_request(0xBA00, arg))


@pytest.mark.parametrize("size", [8, 72, MAX_ARG + 1])
def test_copy_fault_may_carry_fewer_bytes(size):
    arg = arg_for(size)[:-1]
    req = decode_request(encode_request(0xBA00, arg, copy_fault=True))
    assert req.flags.copy_fault and req.arg == arg


@pytest.mark.parametrize("arg", [b"", b"\x48", b"\x48\0\0"])
@pytest.mark.parametrize("copy_fault", [False, True])
def test_sized_check_rejects_arg_without_a_whole_size_field(arg, copy_fault):
    with pytest.raises(FrameError):
        decode_sized(encode_request(0xBA00, arg, copy_fault=copy_fault))


@pytest.mark.parametrize("arg", [b"\0", arg_for(72)])
def test_decode_rejects_arg_bytes_with_arg_fault(arg):
    with pytest.raises(FrameError):
        decode_request(encode_request(0xBA00, arg, arg_fault=True))


@pytest.mark.parametrize("decode,prefix", [
    (frame_from_xattr_name, XATTR_PREFIX), (frame_from_create_name, CREATE_PREFIX)])
@pytest.mark.parametrize("body", [
    b"zz", b"4c5", b"4c55\xff", b"4c55 0100", b"4c55\t01", b"4c55\n", b"+4c55", b"0x4c55"])
def test_decode_rejects_non_hex_names(decode, prefix, body):
    with pytest.raises(FrameError):
        decode(prefix + body)


@pytest.mark.parametrize("decode,name", [
    (frame_from_xattr_name, b""),
    (frame_from_xattr_name, b"4c55"),
    (frame_from_xattr_name, b"user.lux.4c55"),
    (frame_from_xattr_name, CREATE_PREFIX + b"4c55"),
    (frame_from_create_name, b"lu.4c55"),
    (frame_from_create_name, XATTR_PREFIX + b"4c55"),
])
def test_decode_rejects_missing_prefix(decode, name):
    with pytest.raises(FrameError):
        decode(name)


# ---- replies -------------------------------------------------------------------------------


@given(data=st.binary(max_size=MAX_ARG), fd_offset=st.integers(-(2**15), 2**15 - 1),
       fd_sent=st.booleans())
def test_reply_round_trips(data, fd_offset, fd_sent):
    raw = encode_reply(data, fd_offset, fd_sent)
    reply = decode_reply(raw)
    assert (reply.data, reply.fd_offset, reply.fd_sent) == (data, fd_offset, fd_sent)
    assert encode_reply(reply.data, reply.fd_offset, reply.fd_sent) == raw


@given(data=st.binary(max_size=MAX_ARG), fd_offset=st.integers(-(2**15), 2**15 - 1),
       fd_sent=st.booleans())
def test_hot_path_reply_agrees_with_the_construct_reference(data, fd_offset, fd_sent):
    raw = encode_reply(data, fd_offset, fd_sent)
    assert raw == Reply.build(dict(flags=dict(fd_sent=fd_sent), fd_offset=fd_offset, data=data))
    reference = Reply.parse(raw)
    assert (reference.data, reference.fd_offset, bool(reference.flags.fd_sent)) == (
        data, fd_offset, fd_sent)


def test_reply_defaults_have_no_fd():
    reply = decode_reply(encode_reply(b"x"))
    assert reply.fd_offset == -1 and not reply.fd_sent


@given(flags=st.integers(0, 255), rest=st.binary(min_size=4, max_size=12))
@example(flags=0x02, rest=b"\xff\xff\0\0")
def test_any_accepted_reply_rebuilds_byte_exact(flags, rest):
    raw = b"LR\x01" + bytes([flags]) + rest
    try:
        reply = decode_reply(raw)
    except FrameError:
        return
    assert encode_reply(reply.data, reply.fd_offset, reply.fd_sent) == raw


@pytest.mark.parametrize("offset,value", [(0, b"LX"), (0, b"LU"), (2, b"\x02"), (3, b"\x02"),
                                          (3, b"\x80"), (6, b"\x01\x00"), (6, b"\x00\x80")])
def test_decode_reply_rejects_bad_magic_version_flags_or_reserved(offset, value):
    raw = bytearray(encode_reply(b"abc"))
    raw[offset:offset + len(value)] = value
    with pytest.raises(FrameError):
        decode_reply(bytes(raw))


@pytest.mark.parametrize("length", range(0, 8))
def test_decode_reply_rejects_truncated_header(length):
    with pytest.raises(FrameError):
        decode_reply(encode_reply(b"")[:length])
