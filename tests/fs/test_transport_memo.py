"""The front end's memo of pure replies (GET_NAME), driven in-process without a mount:
it may answer only what the core would answer, and only while the kernel runs."""

import errno
import os

import pyfuse3
import pytest

from luofs.kernel import build_fs
from luofs.personalities.boot import cold_boot
from luofs.core import Request
from luofs.fs.transport import MEMO_REPLIES, SessionNode
from luofs.uapi import frames, ioctl as nums, structs


class _Ctx:
    pid = os.getpid()


class _Caller:
    def reserve_fd(self):
        pass


def _run(coroutine):
    """Drive a handler that never awaits (the paths here do not block)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the handler awaited")


def _name(cmd, arg, fd=5) -> bytes:
    return frames.request_xattr_name(frames.encode_request(cmd, arg, file_fd=fd))


def _get_name_arg(reserved=0, fill=b"") -> bytes:
    return structs.GetName.build(dict(size=72, reserved=reserved, name=fill.ljust(64, b"\0")))


@pytest.fixture
def fs():
    ram = os.memfd_create("ram")
    os.ftruncate(ram, 1 << 24)
    yield build_fs(cold_boot("mainline", ram), cmdline="", debugfs=False)
    os.close(ram)


@pytest.fixture
def calls(fs, monkeypatch):
    """How often the core was asked."""
    seen = []
    real = fs.device.luo.session_ioctl

    def counting(session, req, caller):
        seen.append(req.cmd)
        return real(session, req, caller)

    monkeypatch.setattr(fs.device.luo, "session_ioctl", counting)
    return seen


def _session_node(fs, name=b"vm") -> SessionNode:
    arg = structs.CreateSession.build(dict(size=72, fd=-1, name=name.ljust(64, b"\0")))
    outcome = fs.device.ioctl(Request(nums.LIVEUPDATE_IOCTL_CREATE_SESSION, arg), _Caller())
    return fs.table.add(SessionNode(outcome.session))


def _reply_name(reply: bytes) -> bytes:
    return frames.decode_reply(reply).data[8:].split(b"\0")[0]


def test_the_same_get_name_is_answered_once_by_the_core(fs, calls):
    node = _session_node(fs)
    name = _name(nums.LIVEUPDATE_SESSION_GET_NAME, _get_name_arg())
    first = _run(fs.getxattr(node.ino, name, _Ctx))
    second = _run(fs.getxattr(node.ino, name, _Ctx))
    assert first == second and _reply_name(first) == b"vm"
    assert len(calls) == 1


def test_every_session_has_its_own_memo(fs, calls):
    a, b = _session_node(fs, b"a"), _session_node(fs, b"b")
    name = _name(nums.LIVEUPDATE_SESSION_GET_NAME, _get_name_arg())
    assert _reply_name(_run(fs.getxattr(a.ino, name, _Ctx))) == b"a"
    assert _reply_name(_run(fs.getxattr(b.ino, name, _Ctx))) == b"b"
    assert len(calls) == 2


def test_caller_bytes_past_the_name_are_part_of_the_key(fs, calls):
    node = _session_node(fs)
    for fill in (bytes(5) + b"\xff", bytes(5) + b"\xfe"):
        reply = _run(fs.getxattr(node.ino, _name(nums.LIVEUPDATE_SESSION_GET_NAME,
                                                  _get_name_arg(fill=fill)), _Ctx))
        assert frames.decode_reply(reply).data[8:10] == b"vm"
        assert frames.decode_reply(reply).data[13:14] == fill[5:]  # echoed past the NUL
    assert len(calls) == 2


def test_an_error_is_never_remembered(fs, calls):
    node = _session_node(fs)
    name = _name(nums.LIVEUPDATE_SESSION_GET_NAME, _get_name_arg(reserved=1))
    for _ in range(2):
        with pytest.raises(pyfuse3.FUSEError) as e:
            _run(fs.getxattr(node.ino, name, _Ctx))
        assert e.value.errno == errno.EINVAL
    assert len(calls) == 2


def test_a_command_that_changes_state_is_never_remembered(fs, calls):
    node = _session_node(fs)
    arg = structs.Finish.build(dict(size=8, reserved=0))  # EINVAL on an outgoing session
    name = _name(nums.LIVEUPDATE_SESSION_FINISH, arg)
    for _ in range(2):
        with pytest.raises(pyfuse3.FUSEError) as e:
            _run(fs.getxattr(node.ino, name, _Ctx))
        assert e.value.errno == errno.EINVAL
    assert len(calls) == 2 and node.replies == {}


def test_while_rebooting_the_core_decides(fs, calls):
    node = _session_node(fs)
    name = _name(nums.LIVEUPDATE_SESSION_GET_NAME, _get_name_arg())
    _run(fs.getxattr(node.ino, name, _Ctx))
    fs.device.luo.rebooting = True
    coroutine = fs.getxattr(node.ino, name, _Ctx)
    coroutine.send(None)  # the core said Rebooting: the request waits, as the kernel's does
    coroutine.close()
    assert len(calls) == 2


def test_the_memo_stays_bounded(fs, calls):
    node = _session_node(fs)
    for fd in range(3 * MEMO_REPLIES):  # the same question through many fd numbers
        reply = _run(fs.getxattr(node.ino, _name(nums.LIVEUPDATE_SESSION_GET_NAME,
                                                 _get_name_arg(), fd=fd), _Ctx))
        assert _reply_name(reply) == b"vm"
        assert len(node.replies) <= MEMO_REPLIES
    assert len(calls) == 3 * MEMO_REPLIES
