"""luofs.vault and luofs.keeper: files parked outside the kernel's fd table."""

import errno
import fcntl
import os

import pytest

from luofs import keeper, wire
from luofs.keeper import RECORD
from luofs.protocol import StatusRequest
from luofs.protocol_keeper import Fetch, Records
from luofs.vault import KeeperError, Vault


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
    shuffled = refs[::2] + refs[1::2]  # answers come back in the order asked, across keepers
    sizes = [RECORD.unpack(raw)[1] for raw in vault.records([[k, s, 1] for k, s in shuffled])]
    assert sizes == [len(b"x" * i) for i in list(range(7))[::2] + list(range(7))[1::2]]
    assert [vault.record(r)[1] for r in refs] == list(range(7))
    # runs of consecutive slots, each record followed by the asker's pad
    blobs = vault.records([[0, 1, 2], [2, 0, 1], [0, 0, 1]], pad=b"PAD")
    size = RECORD.size + 3
    assert [len(b) // size for b in blobs] == [2, 1, 1]
    assert [RECORD.unpack_from(b, i * size)[1] for b in blobs for i in range(len(b) // size)] \
        == [1, 2, 6, 0]
    assert all(b[i * size + RECORD.size:(i + 1) * size] == b"PAD"
               for b in blobs for i in range(len(b) // size))


def test_a_dead_keeper_fails_records_and_leaves_the_others_in_step(vault):
    refs = [vault.park(memfd(b"x" * i)) for i in range(7)]
    vault.keepers[1].proc.kill()
    vault.keepers[1].proc.wait(timeout=10)
    with pytest.raises(KeeperError) as e:
        vault.records([[k, slot, 1] for k, slot in refs])
    assert e.value.errno == errno.EIO
    # the replies of the keepers that answered were all read: the next request is in step
    assert vault.record(refs[1]) == (0, 1, 1)  # a stale reply would give refs[0]'s record


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_records_read_position_size_and_seals(native):
    read = keeper.records_function() if native else keeper._records_in_python
    if native and read is keeper._records_in_python:
        pytest.skip("native/build/libluofs-records.so is not built (make native)")
    sealed = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
    os.write(sealed, b"abc")
    fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
    plain = memfd(b"y" * 10000, pos=4097)
    tmp = os.open(__file__, os.O_RDONLY)  # not shmem: no seals at all (F_GET_SEALS fails)
    assert read([sealed, plain, tmp], b"--") == b"--".join(
        [read([fd]) for fd in (sealed, plain, tmp)]) + b"--"  # the pad follows each record
    raw = read([sealed, plain, tmp])
    assert [RECORD.unpack_from(raw, i * RECORD.size) for i in range(3)] == [
        (3, 3, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK),
        (4097, 10000, fcntl.F_SEAL_SEAL),  # memfd_create without MFD_ALLOW_SEALING
        (0, os.stat(__file__).st_size, 0),
    ]
    os.close(tmp)
    with pytest.raises(OSError) as e:  # a closed fd: EBADF, named
        read([plain, tmp])
    assert e.value.errno == errno.EBADF
    for fd in (sealed, plain):
        os.close(fd)
    assert read([]) == b""


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
    with pytest.raises(OSError, match="status is not a request a keeper takes"):
        vault.keepers[0].ask(StatusRequest())


def test_drop_many_asks_each_keeper_once_and_counts(vault):
    refs = [vault.park(memfd(b"x" * i)) for i in range(7)]
    vault.drop_many(refs[1:6])
    assert [k.count for k in vault.keepers] == [1, 0, 1]
    with pytest.raises(OSError):
        vault.fetch(refs[3])  # dropped: the keeper no longer has it
    os.close(vault.fetch(refs[6]))  # the keepers serve on for the files they still hold
    os.close(vault.fetch(refs[0]))


def test_a_bad_request_gets_an_error_and_the_keeper_serves_on(vault):
    ref = vault.park(memfd(b"kept"))
    for bad in (Fetch((99,)), Records(((0, 5),))):
        with pytest.raises(OSError, match="KeyError"):
            vault.keepers[0].ask(bad)
    keeper = vault.keepers[0]
    for raw, why in ((b'{"type":"records","runs":"x"}', "records.runs: expected a list"),
                     (b'{"type":"drop","slots":null}', "drop.slots: expected a list"),
                     (b'{"type":"bogus"}', "unknown message type 'bogus'"),
                     (b"garbage", "not JSON")):
        wire.send_bytes(keeper.sock, raw)
        with pytest.raises(OSError, match=why):
            keeper.answer()
    back = vault.fetch(ref)
    assert os.pread(back, 10, 0) == b"kept"
    os.close(back)
