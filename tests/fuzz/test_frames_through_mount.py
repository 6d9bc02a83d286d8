"""Issue 2 "bad input" and issue 7 §2: any request bytes get an errno (or a well-formed
reply), never a crash or a hang of the daemon. The default run is short; `make fuzz`
runs the long one (≥ 1,000,000 inputs) and reports the count."""

import errno
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from luofs.testing import booted
from luofs.uapi import frames

SHORT = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNT = {"inputs": 0}


@pytest.fixture(scope="module")
def target():
    with booted() as inst:
        lu = inst.client()
        session = lu.create_session("fuzz")
        yield inst, lu, session
        session.close()
        lu.close()
        assert inst.status()["kernel"] is not None  # the kernel survived it all


def _send(fd: int, name: bytes):
    COUNT["inputs"] += 1
    try:
        value = os.getxattr(fd, name)
    except OSError as e:
        assert e.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENOSYS), e
        return e.errno
    frames.decode_reply(value)  # a success is always a well-formed reply
    return 0


frame_bodies = st.builds(
    lambda magic, version, flags, cmd, file_fd, reply_fd, arg: struct.pack(
        "<2sBBIiiI", magic, version, flags, cmd, file_fd, reply_fd, 0) + arg,
    st.sampled_from([b"LU", b"LV", b"\0\0"]), st.sampled_from([1, 1, 1, 0, 2]),
    st.integers(0, 255), st.one_of(st.sampled_from([0xBA00, 0xBA01, 0xBA40, 0xBA41, 0xBA42,
                                                    0xBA43, 0xC048BA43]),
                                   st.integers(0, 2**32 - 1)),
    st.integers(-2, 300), st.integers(-2, 300), st.binary(max_size=100))


@SHORT
@given(body=frame_bodies, on_session=st.booleans())
def test_any_frame_gets_an_errno_or_a_reply(target, body, on_session):
    _inst, lu, session = target
    fd = session.fd if on_session else lu.fd
    name = frames.request_xattr_name(body)
    if len(name) <= frames.NAME_MAX:
        _send(fd, name)


@SHORT
@given(raw=st.binary(min_size=1, max_size=240).filter(lambda b: b"\0" not in b))
def test_any_name_gets_an_errno(target, raw):
    _inst, lu, session = target
    _send(session.fd, frames.XATTR_PREFIX + raw)


def test_writes_of_junk_to_control_files_are_einval(target):
    _inst, lu, session = target
    for fd in (lu.fd, session.fd):
        for junk in (b"", b"\0" * 4096, os.urandom(100)):
            with pytest.raises(OSError) as e:
                os.write(fd, junk or b"\n")
            assert e.value.errno == errno.EINVAL


def random_frames(seed: int):
    """The same shapes as `frame_bodies`, from a seeded PRNG: a million hypothesis
    examples would cost far more to generate than to send."""
    rng = random.Random(seed)
    cmds = [0xBA00, 0xBA01, 0xBA40, 0xBA41, 0xBA42, 0xBA43, 0xC048BA43]
    while True:
        cmd = rng.choice(cmds) if rng.random() < 0.8 else rng.getrandbits(32)
        arg = rng.randbytes(rng.randrange(0, 101))
        if rng.random() < 0.5 and len(arg) >= 4:  # often a plausible size field
            arg = rng.choice([8, 16, 72, 80, 4096]).to_bytes(4, "little") + arg[4:]
        yield struct.pack("<2sBBIiiI", rng.choice([b"LU", b"LU", b"LU", b"LV"]),
                          rng.choice([1, 1, 1, 0]), rng.getrandbits(8), cmd,
                          rng.randrange(-2, 300), rng.randrange(-2, 300), 0) + arg


@pytest.mark.slow
def test_long_fuzz_a_million_inputs():
    """`make fuzz`: at least 1,000,000 frames against one daemon; prints the count."""
    with booted() as inst:
        lu = inst.client()
        session = lu.create_session("fuzz")
        COUNT["inputs"] = 0
        errnos_seen = {}
        for i, body in zip(range(1_000_000), random_frames(20261122)):
            name = frames.request_xattr_name(body)[: frames.NAME_MAX]
            code = _send(session.fd if i % 2 else lu.fd, name)
            errnos_seen[code] = errnos_seen.get(code, 0) + 1
        session.close()
        lu.close()
        assert inst.status()["kernel"] is not None
    print(f"\nfuzz: {COUNT['inputs']} inputs, daemon alive; outcomes by errno: "
          f"{dict(sorted(errnos_seen.items()))}")
    assert COUNT["inputs"] >= 1_000_000
