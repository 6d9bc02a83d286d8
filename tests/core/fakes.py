"""Test doubles for the LUO core (helpers, not tests).

- FakeFile: an open file description with an identity (what get_id returns) and a kind.
- FakeCaller: the calling process's fd table, per the Caller protocol.
- FakeHandler: a file handler ("fake-v1") that records every op and fails on demand.
- Request builders and thin wrappers that drive Luo the way the FUSE layer does.
- next_kernel(): boots a fresh Luo from what reboot() carried.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Hashable, Iterable

import pytest
from construct import Bytes

from luofs.core import (
    CarriedFile,
    CarriedSession,
    Direction,
    HandlerRegistry,
    Luo,
    LuoError,
    PreservedFile,
    Request,
    Session,
)
from luofs.uapi import errnos, ioctl, structs
from luofs.uapi.errnos import errno_name
from luofs.uapi.frames import MAX_ARG, expected_arg_len

COMPATIBLE = "fake-v1"


# ---- files and the caller ------------------------------------------------------------


class FakeFile:
    """An open file: `identity` is the underlying object (an inode), `kind` what it is."""

    def __init__(self, identity: Hashable, kind: str = "mem"):
        self.identity = identity
        self.kind = kind
        self.closes = 0

    def close(self) -> None:
        self.closes += 1

    @property
    def closed(self) -> bool:
        return self.closes > 0

    def __repr__(self) -> str:
        return f"<FakeFile {self.identity!r} {self.kind}{' closed' if self.closed else ''}>"


class FakeCaller:
    """A process's fd table. take_file() dups the open file, as pidfd_getfd(2) does."""

    def __init__(self, fds: dict[int, FakeFile] | None = None, full: bool = False):
        self.fds = dict(fds or {})
        self.full = full
        self.reserved = 0  # successful reserve_fd() calls
        self.taken: list[FakeFile] = []  # every file handed to the core, in order

    def reserve_fd(self) -> None:
        if self.full:
            raise LuoError(errnos.EMFILE, "fake fd table is full")
        self.reserved += 1

    def take_file(self, fd: int) -> FakeFile:
        original = self.fds.get(fd)
        if original is None:
            raise LuoError(errnos.EBADF, f"fake fd {fd} is not open")
        dup = FakeFile(original.identity, original.kind)
        self.taken.append(dup)
        return dup


# ---- the handler ---------------------------------------------------------------------


class FakeHandler:
    """Accepts FakeFiles of kind `accepts`; records every op call, in order, in `ops`.

    Failures are configured by file identity in the old kernel (preserve, freeze) and
    by data handle in the new kernel (retrieve, can_finish), where an unretrieved file
    has no file object yet.
    """

    def __init__(self, compatible: str = COMPATIBLE, *, accepts: str = "mem",
                 handed_over: dict[int, Hashable] | None = None):
        self.compatible = compatible
        self.accepts = accepts
        self.ops: list[tuple] = []
        self.handed_over = dict(handed_over or {})  # new kernel: data handle → identity
        self.fail_preserve: dict[Hashable, int] = {}  # identity → errno
        self.fail_freeze: dict[Hashable, int] = {}  # identity → errno
        self.freeze_data: dict[Hashable, int] = {}  # identity → handle freeze() returns
        self.fail_retrieve: dict[int, int] = {}  # data handle → errno
        self.cannot_finish: set[int] = set()  # data handles whose can_finish() is False
        self._handles = itertools.count(0x1000)

    def calls(self, *names: str) -> list[tuple]:
        """The recorded ops with these names (all ops if none given), in call order."""
        return [op for op in self.ops if not names or op[0] in names]

    def can_preserve(self, file) -> bool:
        self.ops.append(("can_preserve", file.identity))
        return file.kind == self.accepts

    def get_id(self, file) -> Hashable:
        self.ops.append(("get_id", file.identity))
        return file.identity

    def preserve(self, file) -> int:
        self.ops.append(("preserve", file.identity))
        if file.identity in self.fail_preserve:
            raise LuoError(self.fail_preserve[file.identity], "fake preserve fails")
        return next(self._handles)

    def unpreserve(self, file, data: int) -> None:
        self.ops.append(("unpreserve", file.identity))

    def freeze(self, file, data: int) -> int:
        self.ops.append(("freeze", file.identity))
        if file.identity in self.fail_freeze:
            raise LuoError(self.fail_freeze[file.identity], "fake freeze fails")
        return self.freeze_data.get(file.identity, data)

    def unfreeze(self, file, data: int) -> None:
        self.ops.append(("unfreeze", file.identity))

    def retrieve(self, data: int, private=None) -> FakeFile:
        self.ops.append(("retrieve", data))
        if data in self.fail_retrieve:
            raise LuoError(self.fail_retrieve[data], "fake retrieve fails")
        if data not in self.handed_over:
            raise LuoError(errnos.ENOENT, f"nothing handed over for {data:#x}")
        return FakeFile(self.handed_over[data], self.accepts)

    def can_finish(self, file, data: int) -> bool:
        self.ops.append(("can_finish", data))
        return data not in self.cannot_finish

    def finish(self, file, data: int, retrieved: bool, private=None) -> None:
        self.ops.append(("finish", data, retrieved))


def registry(*handlers) -> HandlerRegistry:
    reg = HandlerRegistry()
    for h in handlers:
        reg.register(h, sessions_exist=False)
    return reg


def first_boot(*handlers) -> Luo:
    """A Luo with no previous kernel, its device open."""
    luo = Luo(registry(*handlers))
    luo.open_device()
    return luo


def next_kernel(carried: Iterable[CarriedSession], *, rename=lambda identity: identity,
                number: int = 1) -> tuple[Luo, FakeHandler]:
    """A fresh Luo whose incoming sessions are `carried`; the device is not yet open.

    The new kernel's FakeHandler retrieves each carried file by its data handle as a
    new FakeFile whose identity is rename(old identity).
    """
    carried = list(carried)
    handler = FakeHandler(handed_over={
        cf.data: rename(cf.file.identity) for cs in carried for cf in cs.files})
    reg = registry(handler)

    def load():
        sessions = []
        for cs in carried:
            files = {}
            for cf in cs.files:
                h = reg.by_compatible(cf.compatible)
                if h is None:
                    raise LuoError(errnos.ENOENT, f"no handler {cf.compatible!r}")
                files[cf.token] = PreservedFile(cf.token, h, cf.data)
            sessions.append(Session(cs.name, Direction.INCOMING, files=files))
        return sessions

    return Luo(reg, liveupdate_number=number, load_incoming=load), handler


def incoming(sessions: dict[bytes, dict[int, int]]) -> tuple[Luo, FakeHandler]:
    """A second-boot Luo (device open) with incoming sessions {name: {token: data}}.

    File `data` is handed over with identity f"old-{data:#x}".
    """
    carried = [
        CarriedSession(name, tuple(CarriedFile(token, COMPATIBLE, data, FakeFile(f"old-{data:#x}"))
                                   for token, data in files.items()))
        for name, files in sessions.items()
    ]
    luo, handler = next_kernel(carried)
    luo.open_device()
    return luo, handler


# ---- requests ------------------------------------------------------------------------

COMMANDS = {
    "CREATE_SESSION": (ioctl.LIVEUPDATE_IOCTL_CREATE_SESSION, structs.CreateSession),
    "RETRIEVE_SESSION": (ioctl.LIVEUPDATE_IOCTL_RETRIEVE_SESSION, structs.RetrieveSession),
    "PRESERVE_FD": (ioctl.LIVEUPDATE_SESSION_PRESERVE_FD, structs.PreserveFd),
    "RETRIEVE_FD": (ioctl.LIVEUPDATE_SESSION_RETRIEVE_FD, structs.RetrieveFd),
    "FINISH": (ioctl.LIVEUPDATE_SESSION_FINISH, structs.Finish),
    "GET_NAME": (ioctl.LIVEUPDATE_SESSION_GET_NAME, structs.GetName),
}


def struct_bytes(struct, *, size: int | None = None, **fields) -> bytes:
    """The struct built with `fields` (others zero; names padded to 64); `size` defaults
    to the struct size."""
    values = {}
    for sc in struct.subcons:
        if not sc.name:
            continue
        value = fields.pop(sc.name, None)
        if isinstance(sc.subcon, Bytes):
            value = (value or b"").ljust(sc.subcon.sizeof(), b"\0")
        values[sc.name] = value if value is not None else 0
    assert not fields, f"unknown fields {fields}"
    values["size"] = structs.struct_size(struct) if size is None else size
    return struct.build(values)


def make_request(command: str, *, cmd: int | None = None, size: int | None = None,
                 tail: bytes = b"", arg_fault: bool = False, copy_fault: bool = False,
                 tail_nonzero: bool = False, **fields) -> Request:
    """A request for `command` (a COMMANDS key), carrying what a client would carry for
    `size`: the struct, then `tail`, then zeros, cut at expected_arg_len(size)."""
    default_cmd, struct = COMMANDS[command]
    raw = struct_bytes(struct, size=size, **fields) + tail
    raw = raw.ljust(MAX_ARG, b"\0")
    size = int.from_bytes(raw[:4], "little")
    arg = b"" if arg_fault else raw[: expected_arg_len(size)]
    return Request(default_cmd if cmd is None else cmd, arg, arg_fault=arg_fault,
                   copy_fault=copy_fault, tail_nonzero=tail_nonzero)


# ---- driving Luo ---------------------------------------------------------------------


def create(luo: Luo, name: bytes, caller: FakeCaller | None = None, **kw) -> Session:
    out = luo.device_ioctl(make_request("CREATE_SESSION", name=name, **kw), caller or FakeCaller())
    assert out.session is not None
    return out.session


def retrieve_session(luo: Luo, name: bytes, caller: FakeCaller | None = None) -> Session:
    out = luo.device_ioctl(make_request("RETRIEVE_SESSION", name=name), caller or FakeCaller())
    assert out.session is not None
    return out.session


def preserve(luo: Luo, session: Session, caller: FakeCaller, fd: int, token: int):
    return luo.session_ioctl(session, make_request("PRESERVE_FD", fd=fd, token=token), caller)


def retrieve_fd(luo: Luo, session: Session, token: int, caller: FakeCaller | None = None):
    out = luo.session_ioctl(session, make_request("RETRIEVE_FD", token=token),
                            caller or FakeCaller())
    assert out.file is not None
    return out.file


def finish(luo: Luo, session: Session, reserved: int = 0, caller: FakeCaller | None = None):
    return luo.session_ioctl(session, make_request("FINISH", reserved=reserved),
                             caller or FakeCaller())


def get_name(luo: Luo, session: Session, name: bytes = b"", reserved: int = 0) -> bytes:
    """The 64-byte `name` field copied back by GET_NAME."""
    out = luo.session_ioctl(session, make_request("GET_NAME", name=name, reserved=reserved),
                            FakeCaller())
    return structs.GetName.parse(out.copy_back).name


def errno_of(fn, *args, **kwargs) -> int | None:
    """The errno `fn` fails with, or None if it succeeds."""
    try:
        fn(*args, **kwargs)
    except LuoError as e:
        return e.errno
    return None


@contextmanager
def raises_errno(expected: int):
    with pytest.raises(LuoError) as excinfo:
        yield excinfo
    got = excinfo.value.errno
    assert got == expected, (
        f"got {errno_name(got)} ({excinfo.value.reason}), expected {errno_name(expected)}")
