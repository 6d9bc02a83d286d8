"""A kernel whose live update is refused again and again, under every personality,
preserves no more memory than a kernel that tried once: each attempt republishes LUO's
image, and the previous attempt's blocks must go with its subtree (issue 11, item 8)."""

import errno
import os

import pytest

from luofs.core import Direction, LuoError, Session
from luofs.core.faults import Faults
from luofs.core.session import PreservedFile
from luofs.core.state import State
from luofs.fdutil import OwnedFile
from luofs.personalities.boot import cold_boot

ROUNDS = 12


def _with_sessions(kernel, sessions=3, files=4):
    handler = next(iter(kernel.luo.handlers))
    for s in range(sessions):
        session = Session(b"s%d" % s, Direction.OUTGOING, open=True)
        kernel.luo.sessions.append(session)
        for token in range(files):
            fd = os.memfd_create("m")
            os.write(fd, b"x" * (token + 1))
            file = OwnedFile(fd)
            session.files[token] = PreservedFile(token, handler, handler.preserve(file), file)
    return kernel


def _attempt(kernel, faults, refuse_at_finalize: bool) -> None:
    """One reboot the machine never takes: refused at KHO finalize, or written and then
    undone (the hand-over did not reach the machine)."""
    if kernel.name != "mainline" and kernel.state.state is State.NORMAL:
        kernel.state.prepare()  # the RFCs hand LUO data over only from PREPARED
    if refuse_at_finalize:
        faults.armed["kho.finalize"] = errno.EIO
        with pytest.raises(LuoError, match="fault injected at kho.finalize") as caught:
            kernel.freeze()
        assert caught.value.errno == errno.EIO
        del faults.armed["kho.finalize"]
    else:
        kernel.freeze()
        kernel.undo_freeze()


@pytest.mark.parametrize("profile", ["mainline", "rfc-v1", "rfc-v2"])
def test_refused_reboots_keep_the_preserved_map_the_same_size(ram, profile):
    faults = Faults()
    kernel = cold_boot(profile, os.dup(ram), faults)
    if profile == "mainline":
        _with_sessions(kernel)
    _attempt(kernel, faults, refuse_at_finalize=False)
    preserved, memory = kernel.parts.handover.preserved, kernel.parts.memory
    blocks, free = len(preserved), memory.free_page_count
    for round_ in range(ROUNDS):
        _attempt(kernel, faults, refuse_at_finalize=round_ % 2 == 0)
        assert (round_, len(preserved)) == (round_, blocks)
        assert (round_, memory.free_page_count) == (round_, free)
    # and the kernel still hands over once the machine takes it
    handover, _fds = kernel.freeze()
    assert handover.root_size > 0
