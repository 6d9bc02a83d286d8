"""luofs/core/rfc_v2.py: the RFC v2 rules (spec/rfc.md §3): checks, file table, device."""

from __future__ import annotations

import os
import struct

import pytest

from luofs.core import rfc_v2 as rules
from luofs.core.errors import LuoError
from luofs.core.handler import HandlerRegistry
from luofs.core.rfc_v2 import RfcV2Device, RfcV2Files, check_open, rfc_v2_check
from luofs.core.state import State, GlobalState
from luofs.uapi import errnos, ioctl, rfc_v2
from luofs.uapi.rfc_v2 import LiveupdateFd, LiveupdateState

from .fakes import raises_errno

N, P, F, U = State.NORMAL, State.PREPARED, State.FROZEN, State.UPDATED




# ---- rfc_v2_check -------------------------------------------------------------------------------

FD = dict(fd=3, flags=0, token=0)


def fd_arg(**fields):
    return LiveupdateFd.build(dict(FD, **fields))


@pytest.mark.parametrize("cmd", [
    ioctl.IOWR(0xBB, 0x00, 16),  # another type
    0x1234,
    ioctl.IO(0xBA, 0x09),  # no such nr
    ioctl.LIVEUPDATE_IOCTL_CREATE_SESSION,  # mainline's encoding of nr 0
    ioctl.IOW(0xBA, 0x00, 16), ioctl.IOR(0xBA, 0x00, 16), ioctl.IOWR(0xBA, 0x00, 8),
    ioctl.IOWR(0xBA, 0x01, 8), ioctl.IOR(0xBA, 0x03, 8), ioctl.IOW(0xBA, 0x04, 0),
])
def test_anything_not_in_the_table_is_enotty(cmd):
    with raises_errno(errnos.ENOTTY):
        rfc_v2_check(cmd, bytes(16))


def test_selftests_are_not_configured():
    with raises_errno(errnos.EOPNOTSUPP):
        rfc_v2_check(rfc_v2.LIVEUPDATE_IOCTL_SELFTESTS, None)


@pytest.mark.parametrize("cmd,size", [(rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE, 16),
                                      (rfc_v2.LIVEUPDATE_IOCTL_FD_UNPRESERVE, 8),
                                      (rfc_v2.LIVEUPDATE_IOCTL_FD_RESTORE, 16)])
def test_an_unreadable_argument_is_efault(cmd, size):
    for arg in (None, bytes(size - 1), b""):
        with raises_errno(errnos.EFAULT):
            rfc_v2_check(cmd, arg)


@pytest.mark.parametrize("cmd", [rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE,
                                 rfc_v2.LIVEUPDATE_IOCTL_FD_RESTORE])
@pytest.mark.parametrize("flags", [1, 0x80000000])
def test_nonzero_flags_are_einval(cmd, flags):
    with raises_errno(errnos.EINVAL):
        rfc_v2_check(cmd, fd_arg(flags=flags))


def test_check_parses_and_ignores_bytes_past_the_size():
    command, arg = rfc_v2_check(rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE,
                                fd_arg(fd=-1, token=7) + b"\xff" * 8)
    assert (command.name, arg.fd, arg.flags, arg.token) == ("FD_PRESERVE", -1, 0, 7)
    command, arg = rfc_v2_check(rfc_v2.LIVEUPDATE_IOCTL_FD_UNPRESERVE, struct.pack("<Q", 2**64 - 1))
    assert (command.name, arg.token) == ("FD_UNPRESERVE", 2**64 - 1)
    assert rfc_v2_check(rfc_v2.LIVEUPDATE_IOCTL_FD_RESTORE, fd_arg())[0].fd_out_offset == 0


@pytest.mark.parametrize("name", ["GET_STATE", "EVENT_PREPARE", "EVENT_FREEZE", "EVENT_CANCEL",
                                  "EVENT_FINISH"])
def test_commands_that_read_nothing_parse_to_none(name):
    command, arg = rfc_v2_check(getattr(rfc_v2, "LIVEUPDATE_IOCTL_" + name), None)
    assert (command.name, arg) == (name, None)


def test_open_rules():
    check_open(os.O_RDWR | os.O_CLOEXEC, privileged=True)
    check_open(os.O_RDONLY, privileged=True)  # any number of openers: nothing to track
    with raises_errno(errnos.EACCES):
        check_open(os.O_RDWR, privileged=False)
    with raises_errno(errnos.EACCES):
        check_open(os.O_RDWR | os.O_EXCL, privileged=False)  # the capability is checked first
    with raises_errno(errnos.EINVAL):
        check_open(os.O_RDWR | os.O_EXCL, privileged=True)


# ---- the file table -------------------------------------------------------------------------


class File:
    def __init__(self, ident, kind="mem"):
        self.ident, self.kind, self.closes = ident, kind, 0

    def close(self):
        self.closes += 1


class Caller:
    """A process's fd table; take_file() hands out a new reference, as pidfd_getfd does."""

    def __init__(self, **fds):
        self.fds = {int(k[2:]): v for k, v in fds.items()}  # fd3=File(...) → {3: ...}
        self.full = False
        self.taken = []

    def reserve_fd(self):
        if self.full:
            raise LuoError(errnos.EMFILE, "fd table full")

    def take_file(self, fd):
        if fd not in self.fds:
            raise LuoError(errnos.EBADF, f"fd {fd} is not open")
        file = File(self.fds[fd].ident, self.fds[fd].kind)
        self.taken.append(file)
        return file


class Handler:
    """Mainline file-handler ops (luofs/core/handler.py); records (op, ident or data)."""

    compatible = "fake-v1"

    def __init__(self, handed_over=None):
        self.ops = []
        self.fail = {}  # (op, ident or data) → errno
        self.handed_over = dict(handed_over or {})  # data → ident

    def _do(self, op, key):
        self.ops.append((op, key))
        if (op, key) in self.fail:
            raise LuoError(self.fail[(op, key)], f"{op} {key} fails")

    def can_preserve(self, file):
        return file.kind == "mem"

    def get_id(self, file):
        return file.ident

    def preserve(self, file):
        self._do("preserve", file.ident)
        return 0x100 + len(self.ops)

    def unpreserve(self, file, data):
        self._do("unpreserve", file.ident)

    def freeze(self, file, data):
        self._do("freeze", file.ident)
        return data + 0x1000

    def unfreeze(self, file, data):
        self._do("unfreeze", file.ident)

    def retrieve(self, data, private=None):
        self._do("retrieve", data)
        return File(self.handed_over[data])

    def can_finish(self, file, data):
        return True

    def finish(self, file, data, retrieved, private=None):
        self.ops.append(("finish", data, retrieved))


def table(state=N, incoming=(), handler=None):
    handler = handler or Handler()
    handlers = HandlerRegistry()
    handlers.register(handler, sessions_exist=False)
    box = [state]
    files = RfcV2Files(handlers, lambda: box[0], incoming=incoming)
    return files, handler, box


def test_tokens_come_from_one_counter_from_zero_and_are_never_reused():
    files, _, _ = table()
    a, b = Caller(fd3=File("A")), Caller(fd9=File("B"))
    assert [files.preserve(a, 3), files.preserve(b, 9), files.preserve(a, 3)] == [0, 1, 2]
    files.unpreserve(2)
    assert files.preserve(a, 3) == 3
    assert list(files.outgoing) == [0, 1, 3]


def test_preserve_errno_order():
    files, _, box = table()
    caller = Caller(fd3=File("A"), fd4=File("pipe", kind="pipe"))
    box[0] = P
    with raises_errno(errnos.EBADF):  # the fd is looked up first
        files.preserve(caller, 5)
    for state in (P, F):
        box[0] = state
        with raises_errno(errnos.EBUSY):
            files.preserve(caller, 3)
    box[0] = N
    with raises_errno(errnos.ENOENT):
        files.preserve(caller, 4)
    assert [f.closes for f in caller.taken] == [1, 1, 1]  # LUO's references were dropped
    assert files.outgoing == {} and files.preserve(caller, 3) == 0  # failures take no token


def test_preserve_works_in_updated_beside_the_incoming_tokens():
    files, _, _ = table(U, incoming=[(0, "fake-v1", 0x55, None)])
    assert files.preserve(Caller(fd3=File("A")), 3) == 0
    assert list(files.outgoing) == [0] and list(files.incoming) == [0]


def test_unpreserve():
    files, _, box = table()
    caller = Caller(fd3=File("A"))
    files.preserve(caller, 3)
    box[0] = P
    with raises_errno(errnos.EBUSY):  # the state is checked first
        files.unpreserve(7)
    box[0] = U
    with raises_errno(errnos.ENOENT):
        files.unpreserve(7)
    files.unpreserve(0)
    assert caller.taken[0].closes == 1
    with raises_errno(errnos.ENOENT):
        files.unpreserve(0)


def test_restore_errno_order_and_once_only():
    handler = Handler(handed_over={0x55: "old-A"})
    files, _, box = table(N, incoming=[(4, "fake-v1", 0x55, None), (9, "fake-v1", 0x66, None)],
                          handler=handler)
    caller = Caller()
    caller.full = True
    with raises_errno(errnos.EMFILE):  # the fd is allocated first
        files.restore(caller, 4)
    caller.full = False
    for state in (N, P, F):
        box[0] = state
        with raises_errno(errnos.EBUSY):
            files.restore(caller, 4)
    box[0] = U
    with raises_errno(errnos.ENOENT):
        files.restore(caller, 5)
    assert files.restore(caller, 4).ident == "old-A"
    with raises_errno(errnos.EINVAL):
        files.restore(caller, 4)
    handler.fail[("retrieve", 0x66)] = errnos.EIO
    with raises_errno(errnos.EIO):
        files.restore(caller, 9)
    with raises_errno(errnos.EINVAL):  # the RFC marks it reclaimed before retrieving
        files.restore(caller, 9)
    assert handler.ops == [("retrieve", 0x55), ("retrieve", 0x66)]


def test_incoming_files_need_a_handler_and_unique_tokens():
    with raises_errno(errnos.EIO):
        table(U, incoming=[(0, "other-v1", 1, None)])
    with raises_errno(errnos.EIO):
        table(U, incoming=[(0, "fake-v1", 1, None), (0, "fake-v1", 2, None)])


def preserved(*idents):
    files, handler, box = table()
    caller = Caller(**{f"fd{i + 3}": File(ident) for i, ident in enumerate(idents)})
    for i in range(len(idents)):
        files.preserve(caller, i + 3)
    return files, handler, box, caller


def test_prepare_freeze_cancel_map_onto_the_mainline_ops():
    files, handler, _, _ = preserved("A", "B")
    files.prepare()
    files.freeze()
    assert [(e.token, e.data) for e in files.outgoing.values()] == [(0, 0x1101), (1, 0x1102)]
    files.cancel()
    assert handler.ops == [("preserve", "A"), ("preserve", "B"), ("freeze", "A"), ("freeze", "B"),
                           ("unfreeze", "B"), ("unpreserve", "B"),
                           ("unfreeze", "A"), ("unpreserve", "A")]
    assert [e.data for e in files.outgoing.values()] == [0, 0]
    files.cancel()  # nothing left to undo
    assert len(handler.ops) == 8


def test_a_failing_prepare_undoes_its_own_part():
    files, handler, _, _ = preserved("A", "B", "C")
    handler.fail[("preserve", "C")] = errnos.ENOMEM
    with raises_errno(errnos.ENOMEM):
        files.prepare()
    assert handler.ops == [("preserve", "A"), ("preserve", "B"), ("preserve", "C"),
                           ("unpreserve", "B"), ("unpreserve", "A")]
    files.cancel()  # what the state machine does not do, but harmless
    assert len(handler.ops) == 5


def test_a_failing_freeze_unfreezes_its_part_and_cancel_unpreserves_all():
    files, handler, _, _ = preserved("A", "B", "C")
    files.prepare()
    handler.ops.clear()
    handler.fail[("freeze", "C")] = errnos.EIO
    with raises_errno(errnos.EIO):
        files.freeze()
    assert handler.ops == [("freeze", "A"), ("freeze", "B"), ("freeze", "C"),
                           ("unfreeze", "B"), ("unfreeze", "A")]
    handler.ops.clear()
    files.cancel()
    assert handler.ops == [("unpreserve", "C"), ("unpreserve", "B"), ("unpreserve", "A")]


def test_cancel_keeps_going_past_a_failure_and_reports_it():
    files, handler, _, _ = preserved("A", "B")
    files.prepare()
    handler.fail[("unpreserve", "B")] = errnos.EIO
    with raises_errno(errnos.EIO):
        files.cancel()
    assert handler.ops[-2:] == [("unpreserve", "B"), ("unpreserve", "A")]


def test_finish_finishes_every_incoming_file_and_drops_luos_references():
    handler = Handler(handed_over={0x55: "old-A"})
    files, _, _ = table(U, incoming=[(4, "fake-v1", 0x55, None), (9, "fake-v1", 0x66, None)],
                        handler=handler)
    restored = files.restore(Caller(), 4)
    files.finish()
    assert handler.ops[-2:] == [("finish", 0x55, True), ("finish", 0x66, False)]
    assert restored.closes == 1 and files.incoming == {}


def test_carried():
    files, _, _, caller = preserved("A", "B")
    files.prepare()
    files.freeze()
    assert [(c.token, c.compatible, c.data, c.file) for c in files.carried()] == [
        (0, "fake-v1", 0x1101, caller.taken[0]), (1, "fake-v1", 0x1102, caller.taken[1])]


# ---- the device: dispatch, file table and state machine -----------------------------------------


def boot(incoming=()):
    handler = Handler(handed_over={0x1101: "old-A"})
    handlers = HandlerRegistry()
    handlers.register(handler, sessions_exist=False)
    holder = {}
    files = RfcV2Files(handlers, lambda: holder["sm"].state, incoming=incoming)
    holder["sm"] = sm = GlobalState("rfc-v2", [files], updated=bool(incoming))
    return RfcV2Device(sm, files), handler


def get_state(device):
    out = device.ioctl(rfc_v2.LIVEUPDATE_IOCTL_GET_STATE, None, Caller())
    return LiveupdateState(struct.unpack("<I", out.copy_back)[0])


def test_a_live_update_through_the_ioctls():
    old, handler = boot()
    caller = Caller(fd3=File("A"))
    out = old.ioctl(rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE, fd_arg(fd=3, token=0xFFFF), caller)
    assert out.copy_back == fd_arg(fd=3, token=0)  # the kernel chose token 0
    assert get_state(old) == LiveupdateState.NORMAL
    old.ioctl(rfc_v2.LIVEUPDATE_IOCTL_EVENT_PREPARE, None, caller)
    assert get_state(old) == LiveupdateState.PREPARED and handler.ops == [("preserve", "A")]
    with raises_errno(errnos.EBUSY):
        old.ioctl(rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE, fd_arg(fd=3), caller)
    old.ioctl(rfc_v2.LIVEUPDATE_IOCTL_EVENT_FREEZE, None, caller)
    assert get_state(old) == LiveupdateState.FROZEN
    carried = [(c.token, c.compatible, c.data, None) for c in old.files.carried()]
    assert carried == [(0, "fake-v1", 0x1101, None)]

    new, handler = boot(incoming=carried)
    assert get_state(new) == LiveupdateState.UPDATED
    with raises_errno(errnos.EINVAL):
        new.ioctl(rfc_v2.LIVEUPDATE_IOCTL_EVENT_PREPARE, None, caller)
    out = new.ioctl(rfc_v2.LIVEUPDATE_IOCTL_FD_RESTORE, fd_arg(fd=-1, token=0), caller)
    assert out.file.ident == "old-A" and out.command.fd_out_offset == 0
    assert out.copy_back == fd_arg(fd=-1, token=0)  # the transport writes the fd number in
    new.ioctl(rfc_v2.LIVEUPDATE_IOCTL_EVENT_FINISH, None, caller)
    assert get_state(new) == LiveupdateState.NORMAL
    assert handler.ops[-1] == ("finish", 0x1101, True)
    with raises_errno(errnos.EBUSY):
        new.ioctl(rfc_v2.LIVEUPDATE_IOCTL_FD_RESTORE, fd_arg(token=0), caller)


def test_cancel_and_unpreserve_through_the_ioctls():
    dev, handler = boot()
    caller = Caller(fd3=File("A"))
    dev.ioctl(rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE, fd_arg(fd=3), caller)
    dev.ioctl(rfc_v2.LIVEUPDATE_IOCTL_EVENT_PREPARE, None, caller)
    dev.ioctl(rfc_v2.LIVEUPDATE_IOCTL_EVENT_CANCEL, None, caller)
    assert handler.ops == [("preserve", "A"), ("unpreserve", "A")]
    out = dev.ioctl(rfc_v2.LIVEUPDATE_IOCTL_FD_UNPRESERVE, struct.pack("<Q", 0), caller)
    assert out.copy_back == b"" and dev.files.outgoing == {}
    with raises_errno(errnos.EINVAL):
        dev.ioctl(rfc_v2.LIVEUPDATE_IOCTL_EVENT_FINISH, None, caller)


def test_the_memfd_handler_works_unchanged():
    from luofs.fdutil import OwnedFile
    from luofs.handlers.memfd import MemfdHandler

    fd = os.memfd_create("rfc-v2-test")
    try:
        os.write(fd, b"hello")
        handlers = HandlerRegistry()
        handlers.register(MemfdHandler(), sessions_exist=False)
        state = [N]
        files = RfcV2Files(handlers, lambda: state[0])

        class MemCaller:
            def take_file(self, n):
                return OwnedFile(os.dup(n))

        token = files.preserve(MemCaller(), fd)
        files.prepare()
        files.freeze()
        (carried,) = files.carried()
        assert (carried.token, carried.compatible) == (token, "memfd-v2")

        handlers = HandlerRegistry()  # the next kernel's; the machine handed the memfd over
        handlers.register(MemfdHandler(), sessions_exist=False)
        new = RfcV2Files(handlers, lambda: U, incoming=[
            (carried.token, carried.compatible, carried.data, OwnedFile(os.dup(fd)))])
        restored = new.restore(Caller(), token)
        assert os.pread(restored.fd, 5, 0) == b"hello"
        new.finish()
        carried.file.close()
    finally:
        os.close(fd)


def test_public_names_exist():
    for name in rules.__all__:
        assert hasattr(rules, name), name
