"""Personalities booted without a mount: a live update within one process, and every
way a hand-over can be unusable (the new kernel's "panic")."""

import os

import pytest

from luofs.core import Direction, LuoError, Session
from luofs.core.session import PreservedFile
from luofs.fdutil import OwnedFile
from luofs.personalities.base import Panic
from luofs.personalities import boot as booting
from luofs.protocol import FILES, KEEPERS, HandOver, ParkedRun, ProtocolError


def cold_boot(ram_fd):
    return booting.cold_boot("mainline", ram_fd)


def handover_boot(ram_fd, root_phys, root_size, fds, parked=(), keepers=0):
    """The next mainline kernel, from a hand-over given as the machine passes it."""
    split = len(fds) - keepers
    handover = HandOver(root_phys, root_size, 0,
                        parked=tuple(ParkedRun(*r) for r in parked))
    return booting.handover_boot("mainline", ram_fd, handover,
                                 {FILES: fds[:split], KEEPERS: fds[split:]})


def reboot(kernel):
    """The old kernel's freeze, as the dict the tests below read and one fd list."""
    handover, groups = kernel.freeze()
    message = {"root_phys": handover.root_phys, "root_size": handover.root_size,
               "sessions": handover.sessions, "files": handover.files}
    return message, groups[FILES] + groups[KEEPERS]


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
    assert os.pread(pf.handler.retrieve(pf.data, pf.private).fd, 10, 0) == b"seven"


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
        pf.handler.retrieve(pf.data, pf.private)
    assert e.value.errno == 5 and "record says 9" in e.value.reason


def test_two_files_with_one_handle_fail_every_open_with_eio(ram, monkeypatch):
    # Mainline decodes the files at the first open of the device, as the kernel
    # deserializes its sessions then: a bad file list is EIO there, for good (§5).
    from luofs.handlers.memfd import MemfdHandler

    real = MemfdHandler.freeze_many
    monkeypatch.setattr(MemfdHandler, "freeze_many",
                        lambda self, entries: [real(self, entries)[0]] * len(entries))
    old = boot_with_sessions(ram, {b"vm": [(1, b"one"), (2, b"two")]})
    message, fds = reboot(old)
    handed = [os.dup(fd) for fd in fds]
    new = handover_boot(os.dup(ram), message["root_phys"], message["root_size"], handed)
    assert new.luo.liveupdate_number == 1
    for _ in range(2):
        with pytest.raises(LuoError) as e:
            new.luo.open_device()
        assert e.value.errno == 5 and "two memfd-v2 files share handle" in e.value.reason
    for fd in handed:
        with pytest.raises(OSError):
            os.fstat(fd)  # the kernel let go of what it could not use


@pytest.mark.parametrize("runs, fragment", [
    ([[0, 0, 0, 1]], "malformed parked-file runs"),  # names a keeper that was not handed over
    ([[1, 0, 0, 1], [1, 0, 1, 1]], "overlap"),
    ([[5, 0, 0, 1]], "outrun"),  # parked from position 5, with one direct file before it
])
def test_malformed_parked_runs_panic_and_close_every_fd(ram, runs, fragment):
    message, fds = _handed(ram)
    direct = [os.dup(fd) for fd in fds]
    keeper_end, far_end = __import__("socket").socketpair()
    keepers = [] if "malformed" in fragment else [keeper_end.detach()]
    with pytest.raises(Panic, match=fragment):
        handover_boot(os.dup(ram), message["root_phys"], message["root_size"],
                      direct + keepers, parked=runs, keepers=len(keepers))
    for fd in direct:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed
    far_end.close()
    for fd in fds:
        os.close(fd)


def test_an_ill_typed_parked_run_never_reaches_a_personality():
    """The hand-over is typed: a run that is not four integers is refused where it is
    built or received (luofs.protocol), before any kernel sees it."""
    with pytest.raises(ProtocolError, match=r"handover.parked\[0\]\[3\]: expected int"):
        HandOver(0, 0, 0, parked=[[0, 0, 0, "x"]])


def test_store_split_makes_runs_of_consecutive_slots():
    from luofs.filestore import FileStore

    def parked(k, slot):
        return OwnedFile(-1, parked=(k, slot))

    files = [OwnedFile(10), parked(0, 0), parked(0, 1), OwnedFile(11), parked(0, 2),
             parked(1, 0), parked(1, 1), parked(1, 5)]
    fds, runs = FileStore.split(files)
    assert fds == [10, 11]
    assert runs == [(1, 0, 0, 2), (4, 0, 2, 1), (5, 1, 0, 2), (7, 1, 5, 1)]
    assert FileStore.split([]) == ([], [])


def test_freeze_many_records_what_freeze_records_for_direct_and_parked_files(ram):
    import fcntl
    from types import SimpleNamespace

    from luofs.filestore import FileStore

    boot = cold_boot(os.dup(ram))
    handler = next(iter(boot.luo.handlers))
    handler._store = vault = FileStore(direct_limit=1, per_keeper=2)  # 1 direct, 2 keepers
    entries = []
    for i, (content, pos) in enumerate([(b"a" * 10, 3), (b"b" * 5000, 4097), (b"", 0),
                                        (b"d", 1)]):
        fd = os.memfd_create("m", os.MFD_ALLOW_SEALING if i == 2 else 0)
        os.write(fd, content)
        os.lseek(fd, pos, os.SEEK_SET)
        if i == 2:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)
        file = OwnedFile(fd)
        entries.append(SimpleNamespace(file=file, data=handler.preserve(file)))
    assert [e.file.parked is None for e in entries] == [True, False, False, False]
    many = handler.freeze_many(entries)
    one_by_one = [handler.freeze(e.file, e.data) for e in entries]
    read = [boot.parts.slabs.read(phys, 48) for phys in many + one_by_one]
    assert read[:4] == read[4:]
    assert [int.from_bytes(r[:8], "little") for r in read[:4]] == [3, 4097, 0, 1]
    assert int.from_bytes(read[2][16:20], "little") == fcntl.F_SEAL_GROW
    for e in entries:
        e.file.close()
    for keeper in vault.keepers:
        keeper.sock.close()
