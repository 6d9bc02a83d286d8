"""luofs.handover without a mount: a live update within one process, and every way a
hand-over can be unusable (the new kernel's "panic")."""

import os

import pytest

from luofs.core import Direction, LuoError, Session
from luofs.core.session import PreservedFile
from luofs.fdutil import OwnedFile
from luofs.handover import Panic, cold_boot, handover_boot, reboot

RAM = 64 << 20


@pytest.fixture
def ram():
    fd = os.memfd_create("ram")
    os.ftruncate(fd, RAM)
    yield fd
    os.close(fd)


def boot_with_sessions(ram, layout):
    """A cold kernel holding outgoing sessions {name: [(token, bytes)]}."""
    boot = cold_boot(os.dup(ram))
    handler = next(iter(boot.luo.handlers))
    for name, files in layout.items():
        session = Session(name, Direction.OUTGOING, open=True)
        boot.luo.sessions.append(session)
        for token, content in files:
            fd = os.memfd_create("m")
            os.write(fd, content)
            file = OwnedFile(fd)
            session.files[token] = PreservedFile(token, handler, handler.preserve(file), file)
    return boot


def test_hand_over_within_one_process(ram):
    old = boot_with_sessions(ram, {b"a": [(1, b"one"), (0, b"zero")], b"b": [(7, b"seven")]})
    message, fds = reboot(old)
    assert (message["sessions"], message["files"]) == (2, 3)
    new = handover_boot(os.dup(ram), message["root_phys"], message["root_size"],
                        [os.dup(fd) for fd in fds])
    assert new.luo.liveupdate_number == 1
    new.luo.open_device()
    assert [(s.name, list(s.files)) for s in new.luo.sessions] == [(b"a", [1, 0]), (b"b", [7])]
    pf = new.luo.sessions[1].files[7]
    assert os.pread(pf.handler.retrieve(pf.data).fd, 10, 0) == b"seven"


def _handed(ram):
    old = boot_with_sessions(ram, {b"vm": [(1, b"guest ram")]})
    message, fds = reboot(old)
    return message, [os.dup(fd) for fd in fds]


@pytest.mark.parametrize("offset, fragment", [
    (0, "KHO root"),  # the FDT magic
    (8, "KHO root"),  # the structure block offset
])
def test_tampered_root_panics_with_the_reason(ram, offset, fragment):
    message, fds = _handed(ram)
    byte = os.pread(ram, 1, message["root_phys"] + offset)
    os.pwrite(ram, bytes([byte[0] ^ 0xFF]), message["root_phys"] + offset)
    with pytest.raises(Panic, match=fragment):
        handover_boot(os.dup(ram), message["root_phys"], message["root_size"], fds)


def test_truncated_root_panics(ram):
    message, fds = _handed(ram)
    with pytest.raises(Panic, match="KHO root"):
        handover_boot(os.dup(ram), message["root_phys"], 16, fds)


def test_wrong_compatible_panics(ram):
    message, fds = _handed(ram)
    root = os.pread(ram, message["root_size"], message["root_phys"])
    at = root.index(b"kho-v1")
    os.pwrite(ram, b"kho-v9", message["root_phys"] + at)
    with pytest.raises(Panic, match="kho-v9"):
        handover_boot(os.dup(ram), message["root_phys"], message["root_size"], fds)


def test_missing_or_extra_files_panic(ram):
    message, fds = _handed(ram)
    with pytest.raises(Panic, match="1 files but 0 were handed over"):
        handover_boot(os.dup(ram), message["root_phys"], message["root_size"], [])
    os.close(fds[0])


def test_memfd_size_changed_behind_the_record_fails_retrieve_with_eio(ram):
    message, fds = _handed(ram)
    os.ftruncate(fds[0], 1)
    new = handover_boot(os.dup(ram), message["root_phys"], message["root_size"], fds)
    new.luo.open_device()
    pf = new.luo.sessions[0].files[1]
    with pytest.raises(LuoError) as e:
        pf.handler.retrieve(pf.data)
    assert e.value.errno == 5 and "record says 9" in e.value.reason
