"""luofs.vault and luofs.keeper: files parked outside the kernel's fd table."""

import os

import pytest

from luofs.vault import Vault


@pytest.fixture
def vault():
    v = Vault(direct_limit=0, per_keeper=3)
    yield v
    for keeper in v.keepers:
        keeper.sock.close()


def memfd(content: bytes, pos: int = 0) -> int:
    fd = os.memfd_create("parked")
    os.write(fd, content)
    os.lseek(fd, pos, os.SEEK_SET)
    return fd


def test_park_fetch_gives_back_the_same_open_file(vault):
    fd = memfd(b"hello parked world", pos=6)
    ref = vault.park(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # parking closed our fd
    back = vault.fetch(ref)
    assert os.pread(back, 100, 0) == b"hello parked world"
    assert os.lseek(back, 0, os.SEEK_CUR) == 6
    os.lseek(back, 1, os.SEEK_SET)  # the same open file description: the keeper sees it
    assert vault.record(ref) == (1, 18, 1)  # position, size, F_SEAL_SEAL (not sealable)
    os.close(back)


def test_a_keeper_holds_at_most_per_keeper_files(vault):
    refs = [vault.park(memfd(b"x" * i)) for i in range(7)]
    assert [k for k, _ in refs] == [0, 0, 0, 1, 1, 1, 2]
    vault.prefetch_records(refs)
    assert [vault.record(r)[1] for r in refs] == list(range(7))


def test_drop_releases_and_a_keeper_ends_with_its_last_socket():
    v = Vault(direct_limit=0, per_keeper=10)
    fd = memfd(b"gone")
    st = os.fstat(fd)
    ref = v.park(fd)
    v.drop(ref)
    assert v.keepers[0].count == 0
    keeper = v.keepers[0]
    keeper.sock.close()  # the last reference to its socket: it ends, releasing everything
    assert keeper.proc.wait(timeout=10) == 0
    assert st.st_ino  # (the memfd itself went with the keeper's fd)


def test_a_keeper_answers_unknown_requests_with_an_error(vault):
    vault.park(memfd(b"a"))
    with pytest.raises(OSError):
        vault.keepers[0].ask({"op": "bogus"})
